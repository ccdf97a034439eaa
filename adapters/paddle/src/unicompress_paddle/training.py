"""A plain Paddle training loop (task loss, optional extra loss), used by finetune, gradual pruning and QAT.

With ``training.distributed: data_parallel`` the same loop runs inside paddle.DataParallel on every worker
of ``python -m paddle.distributed.launch`` (see `distributed`).

Masks recorded by pruning (`model._unicompress_masks`, neutral [out, in] keep-masks) are re-applied after
every optimizer step so pruned weights stay zero, as FineTuneSpec promises.
A NaN/inf loss stops the stage before its backward pass (FloatingPointError, as on torch and TensorFlow); the
batches come from the core's `TaskData.endless_train`, which refuses float class labels (InvalidDataError)
instead of truncating them.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Optional

import numpy as np

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.reference.training import ADAMW_BETAS, ADAMW_EPSILON, learning_rate_at
from unicompress.specs import FineTuneSpec, TrainingSpec

from .compat import paddle
from .distributed import data_parallel_for
from .layers import compressible, is_linear, to_tensors

MASKS_ATTR = "_unicompress_masks"
MASK_TENSORS_ATTR = "_unicompress_mask_tensors"  # (the masks dict they were made from, name -> tensor)


def record_masks(model: Any, masks: dict[str, np.ndarray]) -> None:
    """Remember keep-masks (neutral [out, in]) so later training keeps those weights at zero."""
    store = dict(getattr(model, MASKS_ATTR, None) or {})
    for name, mask in masks.items():
        store[name] = np.asarray(mask, bool) & store[name] if name in store and store[name].shape == mask.shape \
            else np.asarray(mask, bool)
    object.__setattr__(model, MASKS_ATTR, store)


def apply_masks(model: Any) -> None:
    """Zero the weights the recorded masks remove (in place, with cached Paddle mask tensors)."""
    masks = getattr(model, MASKS_ATTR, None) or {}
    if not masks:
        return
    cache = getattr(model, MASK_TENSORS_ATTR, None)
    if cache is None or cache[0] is not masks:
        cache = (masks, {})
        object.__setattr__(model, MASK_TENSORS_ATTR, cache)
    layers = compressible(model)
    with paddle.no_grad():
        for name, keep in masks.items():
            layer = layers.get(name)
            if layer is None:
                continue
            k = keep.T if is_linear(layer) else keep
            if tuple(layer.weight.shape) != k.shape:
                continue  # the layer was rebuilt (physical removal): its mask no longer applies
            # why cached tensors and multiply_: the former numpy round trip (weight.numpy() * mask, then
            # set_value) copied every masked weight twice per optimizer step
            t = cache[1].get(name)
            if t is None or tuple(t.shape) != k.shape:
                t = cache[1][name] = paddle.to_tensor(k.astype(np.float32))
            layer.weight.multiply_(t)


def batches(data: TaskData, batch_size: Optional[int] = None) -> Iterator[tuple[Any, np.ndarray]]:
    """Training batches forever (the core's `TaskData.endless_train`)."""
    if data is None:
        raise ValueError("this stage trains the model: give TaskData with train batches")
    return data.endless_train(batch_size)


def make_optimizer(model: Any, spec: TrainingSpec, parameters=None):
    params = parameters if parameters is not None else [p for p in model.parameters() if not p.stop_gradient]
    lr: Any = spec.learning_rate
    if spec.warmup_steps:  # the core's rule (unicompress.reference.training); LinearWarmup starts from 0 instead
        warmup = spec.warmup_steps
        lr = paddle.optimizer.lr.LambdaDecay(spec.learning_rate, lambda s: learning_rate_at(s, 1.0, warmup))
    # the core's hyper-parameters (unicompress.reference.training); a float weight_decay is L2 added to the gradient
    if spec.optimizer.value == "sgd" and spec.momentum:
        return paddle.optimizer.Momentum(learning_rate=lr, momentum=spec.momentum, parameters=params,
                                         weight_decay=spec.weight_decay or None), lr
    if spec.optimizer.value == "sgd":
        return paddle.optimizer.SGD(learning_rate=lr, parameters=params, weight_decay=spec.weight_decay or None), lr
    return paddle.optimizer.AdamW(learning_rate=lr, parameters=params, weight_decay=spec.weight_decay,
                                  beta1=ADAMW_BETAS[0], beta2=ADAMW_BETAS[1], epsilon=ADAMW_EPSILON), lr


def train(model: Any, data: TaskData, spec: TrainingSpec, ctx: StageContext,
          extra_loss: Optional[Callable[[Any, Any, Any], Any]] = None, task_weight: float = 1.0,
          on_step: Optional[Callable[[int], None]] = None, parameters=None, forward=None) -> Any:
    """Run `spec.steps` optimizer steps of cross-entropy (times `task_weight`) plus `extra_loss(x, y, logits)`.

    `on_step(step)` runs before each step (gradual pruning updates its masks there). `forward(*tensors)`
    replaces ``model(*tensors)`` (distillation reads hidden states); `parameters` (default: the model's
    trainable ones) may add parameters that live outside the model.
    With ``spec.distributed == data_parallel`` (under ``python -m paddle.distributed.launch``) the model
    trains inside paddle.DataParallel: each rank takes rows ``rank::world_size`` of every global batch, the
    logged loss is the global one and every rank returns the same weights (see `distributed`).
    """
    dp = data_parallel_for(spec)  # None unless data_parallel (then: joined the launcher's group)
    paddle.seed(spec.seed)
    names = getattr(model, "input_names", ("input_ids", "attention_mask"))
    own = [p for p in model.parameters() if not p.stop_gradient]
    params = list(parameters) if parameters is not None else own
    ids = {id(p) for p in own}
    outside = [p for p in params if id(p) not in ids]
    if dp is not None:
        dp.broadcast_from_main(outside)  # paddle.DataParallel syncs the model's own parameters when wrapping
    trained = dp.wrap(model, forward) if dp is not None else (forward or model)
    opt, sched = make_optimizer(model, spec, params)
    model.train()
    every = spec.log_every or 1
    quiet = dp is not None and not dp.is_main  # one progress bar, on rank 0
    ranges = dp.global_quanter_ranges(model) if dp is not None else contextlib.nullcontext()
    with ranges, (StageContext().bar if quiet else ctx.bar)("train", spec.steps) as bar:
        for step, (x, y) in zip(range(spec.steps), batches(data, spec.batch_size)):
            scale = 1.0
            if dp is not None:
                x, y, scale = dp.shard(x, y)
            if on_step is not None:
                on_step(step)
            tensors = to_tensors(x, names)
            logits = trained(*tensors)
            labels = paddle.to_tensor(np.asarray(y, np.int64))
            loss = paddle.nn.functional.cross_entropy(logits, labels) * task_weight
            if extra_loss is not None:
                loss = loss + extra_loss(tensors, labels, logits)
            if dp is not None:
                loss = loss * scale
            shown = dp.mean(loss) if dp is not None else float(loss)  # global: every rank stops together
            if not math.isfinite(shown):  # the message torch's and TensorFlow's loops give
                raise FloatingPointError(f"training loss became {shown} at step {step}; "
                                         "lower training.learning_rate")
            loss.backward()
            if dp is not None:
                dp.average_gradients(outside)
            opt.step()
            opt.clear_grad()
            if hasattr(sched, "step"):
                sched.step()
            apply_masks(model)
            if step % every == 0 or step == spec.steps - 1:
                ctx.log("loss", step, shown)
            bar.update(1)
    model.eval()
    return model


def finetune(model: Any, spec: FineTuneSpec, data: TaskData, ctx: StageContext) -> Any:
    """FineTuneSpec handler: task training, pruned weights kept at zero."""
    return train(model, data, spec.training, ctx)
