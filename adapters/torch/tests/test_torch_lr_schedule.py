"""The optimizer steps torch really takes equal the core's meaning of a TrainingSpec
(`unicompress.reference.training`): the learning rate of each step, and whole SGD / momentum / AdamW trajectories
on a fixed gradient sequence."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from unicompress_torch.training import make_optimizer, make_schedule

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import optimizer_testutil as O  # noqa: E402


def _trajectory(spec):
    w = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
    optimizer = make_optimizer([w], spec)
    schedule = make_schedule(optimizer, spec)
    rates, out = [], []
    for g in O.GRADS:
        rates.append(optimizer.param_groups[0]["lr"])
        w.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
        schedule.step()
        out.append(float(w))
    return rates, out


@pytest.mark.parametrize("warmup", [0, 1, 4])
def test_learning_rate_of_each_step_is_the_core_rule(warmup):
    rates, _ = _trajectory(O.spec("sgd", 0.0, 0.0, warmup))
    assert rates == pytest.approx(O.rates(warmup), abs=1e-12)


@pytest.mark.parametrize("case", O.CASES, ids=O.case_id)
def test_trajectories_are_the_core_ones(case):
    _, out = _trajectory(O.spec(*case))
    assert out == pytest.approx(O.expected(*case), abs=1e-9)
