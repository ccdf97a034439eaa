"""TrainingSpec: the hyper-parameters of any stage that trains (gradual pruning, QAT, distillation)."""
from __future__ import annotations

from enum import Enum
from typing import Optional

from pydantic import Field

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
    """How long and how fast a training stage runs."""

    steps: int = Field(100, ge=1, le=10_000_000, description="optimizer steps")
    learning_rate: float = Field(5e-5, gt=0, le=10, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, le=1)
    warmup_steps: int = Field(0, ge=0)
    optimizer: Optimizer = Optimizer.adamw
    batch_size: int = Field(16, ge=1, le=65536, description="examples per optimizer step (the global batch under "
                            "data_parallel); the training data is re-batched to this size")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="below 2**32: every framework's and numpy's seeding takes it")
    distributed: DistributedStrategy = DistributedStrategy.none
    log_every: Optional[int] = Field(None, ge=1, description="record the loss every N steps")
