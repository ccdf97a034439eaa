"""The optimizer steps Keras really takes equal the core's meaning of a TrainingSpec
(`unicompress.reference.training`): the learning rate of each step, and whole SGD / momentum / AdamW trajectories
on a fixed gradient sequence; momentum with warm-up or weight decay is refused before work."""
from __future__ import annotations

import numpy as np
import pytest

from unicompress.reference.training import adamw_trajectory, learning_rate_at, sgd_trajectory
from unicompress.specs import FineTuneSpec, TrainingSpec
from unicompress_tensorflow.backend import TensorFlowAdapter
from unicompress_tensorflow.training import make_optimizer

import tensorflow as tf  # noqa: E402  (after the adapter: it selects legacy Keras)

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
    w = tf.Variable(1.0, dtype=tf.float64)
    optimizer = make_optimizer(spec)
    out = []
    for g in GRADS:
        optimizer.apply_gradients([(tf.constant(g, tf.float64), w)])
        out.append(float(w.numpy()))
    return out


@pytest.mark.parametrize("warmup", [0, 1, 4])
def test_learning_rate_of_each_step_is_the_core_rule(warmup):
    spec = _spec("sgd", 0.0, 0.0, warmup)
    w = tf.Variable(0.0, dtype=tf.float64)
    optimizer = make_optimizer(spec)
    applied = []
    for _ in GRADS:  # a plain SGD step on gradient 1 moves the weight by exactly the learning rate
        before = float(w.numpy())
        optimizer.apply_gradients([(tf.constant(1.0, tf.float64), w)])
        applied.append(before - float(w.numpy()))
    np.testing.assert_allclose(applied, [learning_rate_at(s, 0.1, warmup) for s in range(len(GRADS))], atol=1e-7)


@pytest.mark.parametrize("case", [c for c in CASES if not (c[1] and (c[2] or c[3]))],
                         ids=lambda c: "-".join(map(str, c)))
def test_trajectories_are_the_core_ones(case):
    # Keras keeps AdamW's betas as float32 (0.999 -> 0.99900001): its bias correction is off by ~1e-5 relative
    np.testing.assert_allclose(_trajectory(_spec(*case)), _expected(*case), atol=1e-6 if case[0] == "sgd" else 5e-6)


def test_momentum_with_decay_or_warmup_is_refused_before_work():
    spec = FineTuneSpec(training=_spec("sgd", 0.9, 0.1, 0))
    problems = TensorFlowAdapter().refusals(spec)
    assert [p.path for p in problems] == ["training.momentum"]
    assert not TensorFlowAdapter().refusals(FineTuneSpec(training=_spec("sgd", 0.9, 0.0, 0)))
