"""The optimizer steps Paddle really takes equal the core's meaning of a TrainingSpec
(`unicompress.reference.training`): the learning rate of each step (Paddle's LinearWarmup starts from 0, so the
first warm-up step used to be lost on Paddle only), and whole SGD / momentum / AdamW trajectories on a fixed
gradient sequence."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from unicompress_paddle.compat import paddle
from unicompress_paddle.training import make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import optimizer_testutil as O  # noqa: E402


def _trajectory(spec):
    layer = paddle.nn.Linear(1, 1, bias_attr=False)
    layer.weight.set_value(np.ones((1, 1), np.float32))
    optimizer, schedule = make_optimizer(layer, spec)
    rates, out = [], []
    for g in O.GRADS:
        rates.append(optimizer.get_lr())
        (layer.weight * g).sum().backward()
        optimizer.step()
        optimizer.clear_grad()
        if hasattr(schedule, "step"):
            schedule.step()
        out.append(float(layer.weight.numpy().reshape(-1)[0]))
    return rates, out


@pytest.mark.parametrize("warmup", [0, 1, 4])
def test_learning_rate_of_each_step_is_the_core_rule(warmup):
    rates, _ = _trajectory(O.spec("sgd", 0.0, 0.0, warmup))
    np.testing.assert_allclose(rates, O.rates(warmup), atol=1e-9)


@pytest.mark.parametrize("case", O.CASES, ids=O.case_id)
def test_trajectories_are_the_core_ones(case):
    _, out = _trajectory(O.spec(*case))
    np.testing.assert_allclose(out, O.expected(*case), atol=2e-6)  # float32 weights
