"""A plain Paddle training loop (task loss, optional extra loss), used by finetune, gradual pruning and QAT.

Masks recorded by pruning (`model._unicompress_masks`, neutral [out, in] keep-masks) are re-applied after
every optimizer step so pruned weights stay zero, as FineTuneSpec promises.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import numpy as np

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import FineTuneSpec, TrainingSpec

from .compat import paddle
from .layers import compressible, is_linear, to_tensors

MASKS_ATTR = "_unicompress_masks"


def record_masks(model: Any, masks: dict[str, np.ndarray]) -> None:
    """Remember keep-masks (neutral [out, in]) so later training keeps those weights at zero."""
    store = dict(getattr(model, MASKS_ATTR, None) or {})
    for name, mask in masks.items():
        store[name] = np.asarray(mask, bool) & store[name] if name in store and store[name].shape == mask.shape \
            else np.asarray(mask, bool)
    object.__setattr__(model, MASKS_ATTR, store)


def apply_masks(model: Any) -> None:
    """Zero the weights the recorded masks remove."""
    masks = getattr(model, MASKS_ATTR, None) or {}
    layers = compressible(model)
    for name, keep in masks.items():
        layer = layers.get(name)
        if layer is None:
            continue
        k = keep.T if is_linear(layer) else keep
        if tuple(layer.weight.shape) != k.shape:
            continue  # the layer was rebuilt (physical removal): its mask no longer applies
        with paddle.no_grad():
            layer.weight.set_value(layer.weight.numpy() * k.astype(np.float32))


def batches(data: TaskData, batch_size: Optional[int] = None) -> Iterator[tuple[Any, np.ndarray]]:
    """Training batches forever (the core's `TaskData.endless_train`)."""
    if data is None:
        raise ValueError("this stage trains the model: give TaskData with train batches")
    return data.endless_train(batch_size)


def make_optimizer(model: Any, spec: TrainingSpec, parameters=None):
    params = parameters if parameters is not None else [p for p in model.parameters() if not p.stop_gradient]
    lr: Any = spec.learning_rate
    if spec.warmup_steps:
        lr = paddle.optimizer.lr.LinearWarmup(spec.learning_rate, spec.warmup_steps, 0.0, spec.learning_rate)
    if spec.optimizer.value == "sgd":
        return paddle.optimizer.SGD(learning_rate=lr, parameters=params, weight_decay=spec.weight_decay or None), lr
    return paddle.optimizer.AdamW(learning_rate=lr, parameters=params, weight_decay=spec.weight_decay), lr


def train(model: Any, data: TaskData, spec: TrainingSpec, ctx: StageContext,
          extra_loss: Optional[Callable[[Any, Any, Any], Any]] = None, task_weight: float = 1.0,
          on_step: Optional[Callable[[int], None]] = None, parameters=None, forward=None) -> Any:
    """Run `spec.steps` optimizer steps of cross-entropy (times `task_weight`) plus `extra_loss(x, y, logits)`.

    `on_step(step)` runs before each step (gradual pruning updates its masks there).
    """
    if spec.distributed.value != "none":
        raise NotImplementedError("the paddle backend trains on one process only (distributed: none)")
    paddle.seed(spec.seed)
    names = getattr(model, "input_names", ("input_ids", "attention_mask"))
    opt, sched = make_optimizer(model, spec, parameters)
    model.train()
    every = spec.log_every or 1
    with ctx.bar("train", spec.steps) as bar:
        for step, (x, y) in zip(range(spec.steps), batches(data, spec.batch_size)):
            if on_step is not None:
                on_step(step)
            tensors = to_tensors(x, names)
            logits = forward(*tensors) if forward is not None else model(*tensors)
            labels = paddle.to_tensor(np.asarray(y, np.int64))
            loss = paddle.nn.functional.cross_entropy(logits, labels) * task_weight
            if extra_loss is not None:
                loss = loss + extra_loss(tensors, labels, logits)
            loss.backward()
            opt.step()
            opt.clear_grad()
            if hasattr(sched, "step"):
                sched.step()
            apply_masks(model)
            if step % every == 0 or step == spec.steps - 1:
                ctx.log("loss", step, float(loss.numpy()))
            bar.update(1)
    model.eval()
    return model


def finetune(model: Any, spec: FineTuneSpec, data: TaskData, ctx: StageContext) -> Any:
    """FineTuneSpec handler: task training, pruned weights kept at zero."""
    return train(model, data, spec.training, ctx)
