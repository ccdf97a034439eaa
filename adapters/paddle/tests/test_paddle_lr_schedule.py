"""The optimizer steps Paddle really takes equal the core's meaning of a TrainingSpec
(`unicompress.reference.training`): the learning rate of each step (Paddle's LinearWarmup starts from 0, so the
first warm-up step used to be lost on Paddle only), and whole SGD / momentum / AdamW trajectories on a fixed
gradient sequence."""
from __future__ import annotations

import numpy as np
import pytest

from unicompress.reference.training import adamw_trajectory, learning_rate_at, sgd_trajectory
from unicompress.specs import TrainingSpec
from unicompress_paddle.compat import paddle
from unicompress_paddle.training import make_optimizer

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
    layer = paddle.nn.Linear(1, 1, bias_attr=False)
    layer.weight.set_value(np.ones((1, 1), np.float32))
    optimizer, schedule = make_optimizer(layer, spec)
    rates, out = [], []
    for g in GRADS:
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
    rates, _ = _trajectory(_spec("sgd", 0.0, 0.0, warmup))
    np.testing.assert_allclose(rates, [learning_rate_at(s, 0.1, warmup) for s in range(len(GRADS))], atol=1e-9)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_trajectories_are_the_core_ones(case):
    _, out = _trajectory(_spec(*case))
    np.testing.assert_allclose(out, _expected(*case), atol=2e-6)  # float32 weights
