"""The training loop every training stage shares (gradual pruning, QAT, distillation, finetune).

A plain tf.GradientTape loop in eager mode rather than `model.fit`: the stages need a hook after
every optimizer step (mask re-application, sparsity logging, a teacher forward) and TaskData hands
us numpy batches of its own size. TFMOT's wrappers update their step counter and masks inside
`call(training=True)`, which is what `fit` relies on too.
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

from typing import Any, Callable, Iterator, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from unicompress.backend.adapter import StageContext  # noqa: E402
from unicompress.backend.types import TaskData  # noqa: E402
from unicompress.specs import FineTuneSpec, TrainingSpec  # noqa: E402

from .layers import named_layers, to_tensors  # noqa: E402

#: loss_fn(model, inputs, labels) -> scalar tensor; the default is the task cross-entropy.
LossFn = Callable[[Any, Any, tf.Tensor], tf.Tensor]


def make_optimizer(spec: TrainingSpec) -> keras.optimizers.Optimizer:
    """AdamW or SGD with linear warm-up to the peak learning rate."""
    lr: Any = spec.learning_rate
    if spec.warmup_steps:
        lr = _Warmup(spec.learning_rate, spec.warmup_steps)
    if spec.optimizer.value == "sgd":
        return keras.optimizers.SGD(lr)
    return keras.optimizers.AdamW(lr, weight_decay=spec.weight_decay)


class _Warmup(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak: float, warmup: int):
        self.peak, self.warmup = float(peak), int(warmup)

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        return self.peak * tf.minimum(1.0, step / float(self.warmup))

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup": self.warmup}


def batches(data: TaskData, batch_size: Optional[int] = None) -> Iterator[tuple[Any, np.ndarray]]:
    """Endless (inputs, labels) batches (the core's `TaskData.endless_train`)."""
    if data is None:
        raise ValueError("this stage trains: give data with train batches (TaskData.train)")
    return data.endless_train(batch_size)


def task_loss(model: Any, inputs: Any, labels: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of the model's logits in training mode."""
    logits = model(inputs, training=True)
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


def train(model: Any, data: TaskData, spec: TrainingSpec, ctx: StageContext, *,
          loss_fn: LossFn = task_loss, variables: Optional[Sequence[tf.Variable]] = None,
          after_step: Optional[Callable[[int], None]] = None, description: str = "train") -> list[float]:
    """Run `spec.steps` optimizer steps; logs ("loss", step, value) every `log_every` steps (default 1).

    `after_step(step)` runs after each update (steps count from 1), e.g. to re-apply pruning masks.
    """
    tf.random.set_seed(spec.seed)
    optimizer = make_optimizer(spec)
    every = spec.log_every or 1
    losses = []
    stream = batches(data, spec.batch_size)
    with ctx.bar(description, spec.steps) as bar:
        for step in range(1, spec.steps + 1):
            x, y = next(stream)
            inputs, labels = to_tensors(model, x), tf.convert_to_tensor(np.asarray(y), tf.int64)
            train_vars = list(variables) if variables is not None else model.trainable_variables
            with tf.GradientTape() as tape:
                loss = loss_fn(model, inputs, labels)
            grads = tape.gradient(loss, train_vars)
            optimizer.apply_gradients([(g, v) for g, v in zip(grads, train_vars) if g is not None])
            if after_step is not None:
                after_step(step)
            value = float(loss.numpy())
            losses.append(value)
            if step % every == 0 or step == spec.steps:
                ctx.log("loss", step, value)
            bar.update(1)
    return losses


def zero_masks(model: Any) -> list[tuple[tf.Variable, tf.Tensor]]:
    """(kernel, mask) of every Dense kernel with exact zeros (pruned weights), to keep them zero."""
    out = []
    for layer in named_layers(model).values():
        if isinstance(layer, keras.layers.Embedding):
            continue
        kernel = layer.kernel
        mask = tf.cast(tf.not_equal(kernel, 0.0), kernel.dtype)
        if float(tf.reduce_min(mask)) == 0.0:
            out.append((kernel, mask))
    return out


def keep_zeros(masks: list[tuple[tf.Variable, tf.Tensor]]) -> Callable[[int], None]:
    """An after_step hook that multiplies the kernels by their masks again."""
    def hook(step: int) -> None:
        for var, mask in masks:
            var.assign(var * mask)
    return hook


def apply_finetune(model: Any, spec: FineTuneSpec, data: Optional[TaskData], ctx: StageContext) -> Any:
    """Task fine-tuning; weights that are exactly zero (pruned) stay zero."""
    if spec.training.distributed.value != "none":
        raise NotImplementedError("distributed fine-tuning is not supported by the TensorFlow backend yet")
    train(model, data, spec.training, ctx, after_step=keep_zeros(zero_masks(model)), description="finetune")
    return model

