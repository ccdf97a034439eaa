"""The torch train loop every training stage shares (fine-tuning, gradual pruning, QAT, distillation).

Public pieces other modules build on (keep their signatures stable):
  - `to_torch_inputs(inputs)`: numpy batch -> dict of tensors
  - `forward_logits(model, inputs)`: logits of HF models, plain modules returning a tensor or a tuple
  - `train_loop(model, data, training, ctx, loss_fn=None, on_step=None, extra_params=None)`
  - `apply_finetune(model, spec, data, ctx)`: the FineTuneSpec handler

``training.distributed: data_parallel`` makes `train_loop` train with DistributedDataParallel under
torchrun (see `distributed.py`), for every stage that trains through it.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize, prune

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import Inputs, TaskData
from unicompress.specs import FineTuneSpec, Optimizer, TrainingSpec
from unicompress.reference.training import ADAMW_BETAS, ADAMW_EPSILON, learning_rate_at

from .distributed import data_parallel_for

#: key used when a batch is a bare array rather than named arrays
TENSOR_KEY = "input"

LossFn = Callable[[nn.Module, dict, torch.Tensor], torch.Tensor]


def to_torch_inputs(inputs: Inputs) -> dict[str, torch.Tensor]:
    """Numpy inputs (an array or named arrays) as a dict of tensors: integers int64, floats float32.

    Example: ``to_torch_inputs({"input_ids": ids, "attention_mask": mask})["input_ids"].dtype`` is int64.
    """
    if not isinstance(inputs, dict):
        inputs = {TENSOR_KEY: inputs}
    out = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            out[name] = value
            continue
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
            out[name] = torch.from_numpy(np.ascontiguousarray(arr.astype(np.int64)))
        else:
            out[name] = torch.from_numpy(np.ascontiguousarray(arr.astype(np.float32)))
    return out


def _accepts(model: nn.Module, names: Sequence[str]) -> bool:
    # DDP's forward takes (*inputs, **kwargs): ask the module it wraps
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(n in params for n in names)


def call_model(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
    """Call a module with named inputs: as keywords when its forward takes them, else positionally."""
    if TENSOR_KEY in inputs and len(inputs) == 1:
        return model(inputs[TENSOR_KEY])
    if _accepts(model, list(inputs)):
        return model(**inputs)
    if len(inputs) == 1:
        return model(next(iter(inputs.values())))
    return model(*inputs.values())


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model output: `.logits`, a ``"logits"`` key, the first tuple item, or the tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict):
        return output["logits"] if "logits" in output else next(iter(output.values()))
    if isinstance(output, (tuple, list)):
        return logits_of(output[0])
    raise TypeError(f"cannot find logits in a {type(output).__name__} model output")


def forward_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run `model` on named tensors and return its logits.

    Example: ``forward_logits(bert, to_torch_inputs(batch)).shape == (B, num_labels)``.
    """
    return logits_of(call_model(model, inputs))


def cross_entropy_loss(model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """The default task loss: cross-entropy of the logits against int64 labels.

    Token logits [batch, seq, vocab] with labels [batch, seq] (the core's causal-lm blocks, labels = inputs) are
    the causal LM loss: position t predicts token t + 1, labels -100 (padding) ignored, as in Hugging Face's
    ``*ForCausalLM`` and the core's perplexity (`unicompress.metrics.token_nll`).
    """
    logits = forward_logits(model, inputs)
    if logits.dim() == 3 and labels.dim() == 2 and logits.shape[:2] == labels.shape:
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                               ignore_index=-100)
    return F.cross_entropy(logits, labels)


def batches_forever(data: TaskData, batch_size: Optional[int] = None
                    ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """(inputs, labels) tensors from the core's endless `TaskData.endless_train()`, `batch_size` rows each
    when given (a stage's ``training.batch_size``)."""
    if data is None:
        raise ValueError("this stage trains the model: pass TaskData with a `train` source")
    for x, y in data.endless_train(batch_size):
        yield to_torch_inputs(x), torch.as_tensor(np.asarray(y, dtype=np.int64))


def make_schedule(optimizer: Any, training: TrainingSpec) -> Any:
    """The core's learning-rate rule (`unicompress.reference.training`: linear warm-up from step 0, then the
    peak) as a LambdaLR over `optimizer`'s peak learning rate."""
    warmup = training.warmup_steps
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_at(s, 1.0, warmup))


def make_optimizer(params: Iterable[torch.Tensor], training: TrainingSpec) -> torch.optim.Optimizer:
    """AdamW or SGD with the core's hyper-parameters (`unicompress.reference.training`)."""
    params = list(params)
    if training.optimizer is Optimizer.sgd:
        return torch.optim.SGD(params, lr=training.learning_rate, momentum=training.momentum,
                               weight_decay=training.weight_decay)
    return torch.optim.AdamW(params, lr=training.learning_rate, weight_decay=training.weight_decay,
                             betas=ADAMW_BETAS, eps=ADAMW_EPSILON)


def _zero_masks(model: nn.Module) -> list[nn.Module]:
    """Attach torch.nn.utils.prune masks to weights with permanent zeros so training keeps them zero.

    Returns the modules masked here (the caller makes the masks permanent again at the end).
    Modules already under a pruning hook keep their own mask.
    """
    masked = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() < 2 or hasattr(module, "weight_mask") \
                or parametrize.is_parametrized(module):
            continue
        zeros = weight.detach() == 0
        if bool(zeros.any()):
            prune.custom_from_mask(module, "weight", mask=~zeros)
            masked.append(module)
    return masked


def refresh_masked_weights(model: nn.Module) -> None:
    """Recompute every pruned tensor (orig * mask) for the coming forward pass.

    torch.nn.utils.prune refreshes a weight in a forward pre-hook of its own module, but some parents
    read a child's weight without calling the child (nn.MultiheadAttention reads ``out_proj.weight``),
    which would reuse a tensor from the previous step's freed graph.
    """
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, (prune.BasePruningMethod, prune.PruningContainer)):
                setattr(module, hook._tensor_name, hook.apply_mask(module))


@contextmanager
def global_rng_kept() -> Iterator[None]:
    """Run a block that seeds and draws from torch's global RNG (dropout, init) and restore the global CPU RNG
    (and the CUDA ones in use) on exit, so a stage never changes the random stream of the user's other code."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield


def train_loop(model: nn.Module, data: TaskData, training: TrainingSpec, ctx: Optional[StageContext] = None,
               loss_fn: Optional[LossFn] = None, on_step: Optional[Callable[[int], Any]] = None,
               extra_params: Optional[Sequence[torch.Tensor]] = None,
               after_backward: Optional[Callable[[int], Any]] = None, keep_zeros: bool = True) -> nn.Module:
    """`_train_loop` (below) seeded with ``training.seed`` inside `global_rng_kept`: the global RNG state is the
    same before and after the stage."""
    with global_rng_kept():
        return _train_loop(model, data, training, ctx, loss_fn, on_step, extra_params, after_backward, keep_zeros)


def _train_loop(model: nn.Module, data: TaskData, training: TrainingSpec, ctx: Optional[StageContext] = None,
               loss_fn: Optional[LossFn] = None, on_step: Optional[Callable[[int], Any]] = None,
               extra_params: Optional[Sequence[torch.Tensor]] = None,
               after_backward: Optional[Callable[[int], Any]] = None, keep_zeros: bool = True) -> nn.Module:
    """Train `model` in place for `training.steps` optimizer steps and return it (in eval mode).

    - `loss_fn(model, inputs, labels) -> scalar tensor` (default: cross-entropy on the logits).
    - `on_step(step)` runs before the forward pass of every step (0-based) and once more with
      ``step == training.steps`` after the last one: the place for mask updates and schedules.
    - `after_backward(step)` runs after the backward pass, before the optimizer step (e.g. movement scores).
    - `extra_params` are trained too (e.g. distillation projections, L0 gates).
    - Weights that are exactly zero (pruned earlier) stay zero: they get a torch prune mask for the
      duration (`keep_zeros`); weights under an existing prune mask keep theirs.
    Logs ``ctx.log("loss", step, value)`` every `training.log_every` steps (default every step).
    With ``training.distributed == data_parallel`` (under torchrun) the model trains inside
    DistributedDataParallel: each rank takes rows ``rank::world_size`` of every global batch, `loss_fn`
    gets the DDP wrapper (call it; the plain module is its ``.module``), the logged loss is the global one,
    and every rank returns the same plain module.

    Example: ``train_loop(model, data, TrainingSpec(steps=10, learning_rate=1e-3), ctx)``.
    """
    ctx = ctx or StageContext()
    loss_fn = loss_fn or cross_entropy_loss
    torch.manual_seed(training.seed)
    dp = data_parallel_for(training, model)  # None unless data_parallel (then: joined torchrun's group)
    masked = _zero_masks(model) if keep_zeros else []
    params = [p for p in model.parameters() if p.requires_grad]
    ids = {id(p) for p in params}
    outside = [p for p in (extra_params or []) if id(p) not in ids]
    params += outside
    if dp is not None:
        dp.broadcast_from_main(outside)  # DDP syncs the module's own parameters when wrapping
    # DDP wraps after the temporary masks exist, so it registers weight_orig (the same Parameter object)
    trained = dp.wrap(model) if dp is not None else model
    optimizer = make_optimizer(params, training)
    schedule = make_schedule(optimizer, training)
    every = training.log_every or 1
    batches = batches_forever(data, training.batch_size)
    model.train()
    quiet = dp is not None and not dp.is_main  # one progress bar, on rank 0
    try:
        with (StageContext().bar if quiet else ctx.bar)("train", training.steps) as bar:
            for step, (inputs, labels) in zip(range(training.steps), batches):
                if dp is not None:
                    inputs, labels, scale = dp.shard(inputs, labels)
                if on_step is not None:
                    on_step(step)
                optimizer.zero_grad(set_to_none=True)
                refresh_masked_weights(model)
                loss = loss_fn(trained, inputs, labels)
                if dp is not None:
                    dp.sync_observers(model)  # QAT: the ranges one process would have seen on the whole batch
                    loss = loss * scale
                    shown = dp.mean(loss)  # the global loss, the same on every rank (so all stop together)
                else:
                    shown = loss.detach()
                if not torch.isfinite(shown):
                    raise FloatingPointError(f"training loss became {shown.item()} at step {step}; "
                                             "lower training.learning_rate")
                loss.backward()
                if dp is not None:
                    dp.average_gradients(outside)
                if after_backward is not None:
                    after_backward(step)
                optimizer.step()
                schedule.step()
                if step % every == 0 or step == training.steps - 1:
                    ctx.log("loss", step, float(shown))
                bar.update(1)
                bar.set_postfix(loss=f"{float(shown):.4f}")
            if on_step is not None:
                on_step(training.steps)
    finally:
        model.eval()
        for module in masked:
            if hasattr(module, "weight_mask"):
                prune.remove(module, "weight")
        if dp is not None:
            dp.unwrap()
    if dp is not None:
        dp.sync_module(model)  # not in `finally`: a collective after one rank failed would hang the others
    return model


def apply_finetune(model: nn.Module, spec: FineTuneSpec, data: Optional[TaskData],
                   ctx: StageContext) -> nn.Module:
    """FineTuneSpec handler: task training (data-parallel under torchrun when the spec asks); pruned
    weights stay zero."""
    return train_loop(model, data, spec.training, ctx)


def first_batch(data: TaskData) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The first (inputs, labels) batch of the training data, as tensors."""
    return next(batches_forever(data))


__all__ = ["to_torch_inputs", "forward_logits", "call_model", "logits_of", "cross_entropy_loss", "train_loop",
           "make_optimizer", "make_schedule", "apply_finetune", "batches_forever", "first_batch", "TENSOR_KEY"]
