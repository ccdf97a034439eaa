"""TrainingSpec: the hyper-parameters of any stage that trains (gradual pruning, QAT, distillation)."""
from __future__ import annotations

from enum import Enum
from typing import Optional

from pydantic import Field, model_validator

from .base import SpecModel

#: the largest seed a recipe may give: 2**32 - 1, what numpy's legacy RandomState, TensorFlow, Paddle and torch
#: all accept (a larger one would validate here and fail inside a framework at run time)
MAX_SEED = 2**32 - 1


class Optimizer(str, Enum):
    adamw = "adamw"
    sgd = "sgd"


class DistributedStrategy(str, Enum):
    """How training is spread over processes, using each framework's own engine."""

    none = "none"
    data_parallel = "data_parallel"  # torch DDP, tf.distribute.MultiWorkerMirrored, paddle.DataParallel


class TrainingSpec(SpecModel):
    """How long and how fast a training stage runs.

    The meaning is the same on every backend (`unicompress.reference.training` computes it in numpy and each
    backend's test checks its native optimizer against it): step s (from 0) uses
    ``learning_rate * min(1, (s + 1) / warmup_steps)``; AdamW is decoupled weight decay with betas (0.9, 0.999) and
    epsilon 1e-8; SGD is ``v = momentum * v + (grad + weight_decay * w); w -= lr * v``.
    """

    steps: int = Field(100, ge=1, le=10_000_000, description="optimizer steps")
    learning_rate: float = Field(5e-5, gt=0, le=10, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, le=1)
    warmup_steps: int = Field(0, ge=0)
    optimizer: Optimizer = Optimizer.adamw
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum (heavy ball: v = momentum * v + grad, "
                            "w -= lr * v); 0: plain SGD. AdamW always uses betas (0.9, 0.999), epsilon 1e-8")
    batch_size: int = Field(16, ge=1, le=65536, description="examples per optimizer step (the global batch under "
                            "data_parallel); the training data is re-batched to this size")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="below 2**32: every framework's and numpy's seeding takes it")
    distributed: DistributedStrategy = DistributedStrategy.none
    log_every: Optional[int] = Field(None, ge=1, description="record the loss every N steps")

    @model_validator(mode="after")
    def _momentum_is_sgd(self) -> "TrainingSpec":
        if self.momentum and self.optimizer is not Optimizer.sgd:
            raise ValueError(f"momentum {self.momentum} is an SGD setting; optimizer {self.optimizer.value!r} uses "
                             "betas (0.9, 0.999): set optimizer: sgd or drop momentum")
        return self
