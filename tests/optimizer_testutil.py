"""The shared body of every backend's optimizer test (`adapters/*/tests/test_*_lr_schedule.py`): a fixed gradient
sequence, the TrainingSpecs tried, and the core's trajectories (`unicompress.reference.training`) they must follow."""
from __future__ import annotations

from unicompress.reference.training import adamw_trajectory, learning_rate_at, sgd_trajectory
from unicompress.specs import TrainingSpec

GRADS = [1.0, -2.0, 0.5, 3.0, -1.0, 2.0, 0.25]
#: (optimizer, momentum, weight_decay, warmup_steps)
CASES = [("sgd", 0.0, 0.1, 4), ("sgd", 0.9, 0.1, 0), ("sgd", 0.9, 0.0, 0), ("adamw", 0.0, 0.01, 3),
         ("adamw", 0.0, 0.0, 0)]
PEAK = 0.1


def expected(optimizer: str, momentum: float, decay: float, warmup: int) -> list[float]:
    """The weight after each step, from 1.0, on GRADS."""
    if optimizer == "sgd":
        return sgd_trajectory(1.0, GRADS, PEAK, warmup, momentum, decay)
    return adamw_trajectory(1.0, GRADS, PEAK, warmup, decay)


def rates(warmup: int) -> list[float]:
    """The learning rate of each step."""
    return [learning_rate_at(s, PEAK, warmup) for s in range(len(GRADS))]


def spec(optimizer: str, momentum: float, decay: float, warmup: int) -> TrainingSpec:
    return TrainingSpec(learning_rate=PEAK, warmup_steps=warmup, optimizer=optimizer, momentum=momentum,
                        weight_decay=decay, steps=len(GRADS))


def case_id(case: tuple) -> str:
    return "-".join(map(str, case))
