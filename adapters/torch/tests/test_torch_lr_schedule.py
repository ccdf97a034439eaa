"""The optimizer steps torch really takes equal the core's meaning of a TrainingSpec
(`unicompress.reference.training`): the learning rate of each step, and whole SGD / momentum / AdamW trajectories
on a fixed gradient sequence."""
from __future__ import annotations

import pytest
import torch

from unicompress.reference.training import adamw_trajectory, learning_rate_at, sgd_trajectory
from unicompress.specs import TrainingSpec
from unicompress_torch.training import make_optimizer, make_schedule

GRADS = [1.0, -2.0, 0.5, 3.0, -1.0, 2.0, 0.25]
CASES = [("sgd", 0.0, 0.1, 4), ("sgd", 0.9, 0.1, 0), ("sgd", 0.9, 0.0, 0), ("adamw", 0.0, 0.01, 3),
         ("adamw", 0.0, 0.0, 0)]


def _expected(optimizer, momentum, decay, warmup):
    if optimizer == "sgd":
        return sgd_trajectory(1.0, GRADS, 0.1, warmup, momentum, decay)
    return adamw_trajectory(1.0, GRADS, 0.1, warmup, decay)


def _spec(optimizer, momentum, decay, warmup):
    return TrainingSpec(learning_rate=0.1, warmup_steps=warmup, optimizer=optimizer, momentum=momentum,
                        weight_decay=decay, steps=len(GRADS))


def _trajectory(spec):
    w = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
    optimizer = make_optimizer([w], spec)
    schedule = make_schedule(optimizer, spec)
    rates, out = [], []
    for g in GRADS:
        rates.append(optimizer.param_groups[0]["lr"])
        w.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
        schedule.step()
        out.append(float(w))
    return rates, out


@pytest.mark.parametrize("warmup", [0, 1, 4])
def test_learning_rate_of_each_step_is_the_core_rule(warmup):
    rates, _ = _trajectory(_spec("sgd", 0.0, 0.0, warmup))
    assert rates == pytest.approx([learning_rate_at(s, 0.1, warmup) for s in range(len(GRADS))], abs=1e-12)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_trajectories_are_the_core_ones(case):
    _, out = _trajectory(_spec(*case))
    assert out == pytest.approx(_expected(*case), abs=1e-9)
