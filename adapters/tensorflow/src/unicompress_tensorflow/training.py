"""The training loop every training stage shares (gradual pruning, QAT, distillation, finetune).

A tf.GradientTape step compiled with tf.function, driven by a Python loop rather than `model.fit`: the
stages need a hook after every optimizer step (mask re-application, sparsity logging) and TaskData
hands us numpy batches. TFMOT's wrappers update their step counter and masks inside
`call(training=True)`, which is what `fit` relies on too. The step is traced once per stage (about 5 s
for MiniLM-L6; then 0.82 steps/s at batch 16 x 128 on one busy core, against 0.54 eager).
``training.distributed: data_parallel`` runs the same step on every tf.distribute worker and lets
MultiWorkerMirroredStrategy all-reduce the gradients (`distributed.py`).
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
from unicompress.reference.training import ADAMW_BETAS, ADAMW_EPSILON  # noqa: E402
from unicompress.specs import FineTuneSpec, TrainingSpec  # noqa: E402

from .distributed import data_parallel_for  # noqa: E402
from .layers import kernel_var, named_layers, to_tensors  # noqa: E402

#: loss_fn(model, inputs, labels) -> scalar tensor; the default is the task cross-entropy.
LossFn = Callable[[Any, Any, tf.Tensor], tf.Tensor]


def make_optimizer(spec: TrainingSpec) -> keras.optimizers.Optimizer:
    """AdamW or SGD with the core's warm-up and hyper-parameters (`unicompress.reference.training`).

    Keras' weight decay is decoupled (``w -= lr * wd * w`` before the step): for plain SGD that equals the L2
    term the core adds to the gradient. With momentum, Keras keeps lr-scaled velocities and decays outside them,
    so momentum together with warm-up or weight decay is refused before work (`capabilities`)."""
    lr: Any = spec.learning_rate
    if spec.warmup_steps:
        lr = _Warmup(spec.learning_rate, spec.warmup_steps)
    if spec.optimizer.value == "sgd":
        return keras.optimizers.SGD(lr, momentum=spec.momentum, weight_decay=spec.weight_decay or None)
    return keras.optimizers.AdamW(lr, weight_decay=spec.weight_decay, beta_1=ADAMW_BETAS[0], beta_2=ADAMW_BETAS[1],
                                  epsilon=ADAMW_EPSILON)


class _Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """The core's rule (`unicompress.reference.training.learning_rate_at`) in the graph: step s (from 0) uses
    peak * min(1, (s + 1) / warmup); test_tensorflow_lr_schedule replays it against the reference."""

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
    The forward, backward and optimizer update of a step run as one compiled `tf.function` (traced once
    per stage; `reduce_retracing` so a batch of another size makes at most one more trace).
    With ``spec.distributed == data_parallel`` the process must be a tf.distribute worker (see
    `distributed.py`): each worker computes the gradient of its rows of the global batch and the
    MultiWorkerMirroredStrategy all-reduces them inside the compiled step, so every worker applies the
    same update (the one a single process would make on the whole batch) and returns the same weights.

    Example: ``train(model, data, TrainingSpec(steps=10, learning_rate=1e-3), StageContext())``.
    """
    dp = data_parallel_for(spec)  # None, or this worker's view (raises naming the launch command)
    tf.random.set_seed(spec.seed)
    optimizer = make_optimizer(spec)
    train_vars = list(variables) if variables is not None else list(model.trainable_variables)
    optimizer.build(train_vars)  # slots now: a tf.function may create variables only on its first trace
    step_fn = compiled_step(model, loss_fn, train_vars, optimizer, dp)
    merge_ranges = None
    if dp is not None:
        dp.broadcast_from_chief(_unique([*model.variables, *train_vars]))  # every worker starts from worker 0
        merge_ranges = dp.merge_ranges(model.variables)  # QAT: the ranges of the whole batch
    every = spec.log_every or 1
    losses = []
    stream = batches(data, spec.batch_size)
    quiet = dp is not None and not dp.is_chief  # one progress bar, on the chief
    with (StageContext().bar if quiet else ctx.bar)(description, spec.steps) as bar:
        for step in range(1, spec.steps + 1):
            x, y = next(stream)
            n_global = int(np.asarray(y).shape[0])
            if dp is not None:
                x, y = dp.shard(x, y)
            inputs, labels = to_tensors(model, x), tf.convert_to_tensor(np.asarray(y), tf.int64)
            weight = tf.constant(int(np.asarray(y).shape[0]) / n_global, tf.float32)
            value = float(step_fn(inputs, labels, weight).numpy())
            if merge_ranges is not None:
                merge_ranges()
            if not np.isfinite(value):
                raise FloatingPointError(f"training loss became {value} at step {step}; "
                                         "lower training.learning_rate")
            if after_step is not None:
                after_step(step)
            losses.append(value)
            if step % every == 0 or step == spec.steps:
                ctx.log("loss", step, value)
            bar.update(1)
    return losses


def _unique(variables: Sequence[tf.Variable]) -> list[tf.Variable]:
    seen, out = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def compiled_step(model: Any, loss_fn: LossFn, train_vars: Sequence[tf.Variable],
                  optimizer: keras.optimizers.Optimizer, dp: Optional[Any] = None
                  ) -> Callable[[Any, tf.Tensor, tf.Tensor], tf.Tensor]:
    """One optimizer step as a `tf.function(inputs, labels, weight) -> loss`.

    `weight` is this process's share of the global batch (1 without data parallelism): the gradient of
    ``weight * local mean loss``, summed over workers by the strategy, is the gradient of the global
    mean loss, and the returned loss is the global mean. Gradients that do not reach a variable (None)
    are left out of the update, as eager training would.
    """
    train_vars = list(train_vars)

    @tf.function(reduce_retracing=True)
    def step(inputs: Any, labels: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(model, inputs, labels) * weight
        grads = tape.gradient(loss, train_vars)
        if dp is not None:
            loss, grads = dp.all_reduce_sum(loss, grads)
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, train_vars) if g is not None])
        return loss

    return step


def zero_masks(model: Any) -> list[tuple[tf.Variable, tf.Tensor]]:
    """(kernel, mask) of every Dense kernel with exact zeros (pruned weights), to keep them zero."""
    out = []
    for layer in named_layers(model).values():
        if isinstance(layer, keras.layers.Embedding):
            continue
        kernel = kernel_var(layer)  # the float variable, also under a quantization wrapper
        mask = tf.cast(tf.not_equal(kernel, 0.0), kernel.dtype)
        if float(tf.reduce_min(mask)) == 0.0:
            out.append((kernel, mask))
    return out


def keep_zeros(masks: list[tuple[tf.Variable, tf.Tensor]]) -> Optional[Callable[[int], None]]:
    """An after_step hook that multiplies the kernels by their masks again (None when nothing is masked)."""
    if not masks:
        return None

    @tf.function
    def reapply() -> None:  # one compiled call, not one eager op per kernel
        for var, mask in masks:
            var.assign(var * mask)

    def hook(step: int) -> None:
        reapply()
    return hook


def apply_finetune(model: Any, spec: FineTuneSpec, data: Optional[TaskData], ctx: StageContext) -> Any:
    """Task fine-tuning; weights that are exactly zero (pruned) stay zero."""
    train(model, data, spec.training, ctx, after_step=keep_zeros(zero_masks(model)), description="finetune")
    return model

