"""The optimizer steps Keras really takes equal the core's meaning of a TrainingSpec
(`unicompress.reference.training`): the learning rate of each step, and whole SGD / momentum / AdamW trajectories
on a fixed gradient sequence; momentum with warm-up or weight decay is refused before work."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from unicompress.specs import FineTuneSpec
from unicompress_tensorflow.backend import TensorFlowAdapter
from unicompress_tensorflow.training import make_optimizer

import tensorflow as tf  # noqa: E402  (after the adapter: it selects legacy Keras)

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import optimizer_testutil as O  # noqa: E402


def _trajectory(spec):
    w = tf.Variable(1.0, dtype=tf.float64)
    optimizer = make_optimizer(spec)
    out = []
    for g in O.GRADS:
        optimizer.apply_gradients([(tf.constant(g, tf.float64), w)])
        out.append(float(w.numpy()))
    return out


@pytest.mark.parametrize("warmup", [0, 1, 4])
def test_learning_rate_of_each_step_is_the_core_rule(warmup):
    spec = O.spec("sgd", 0.0, 0.0, warmup)
    w = tf.Variable(0.0, dtype=tf.float64)
    optimizer = make_optimizer(spec)
    applied = []
    for _ in O.GRADS:  # a plain SGD step on gradient 1 moves the weight by exactly the learning rate
        before = float(w.numpy())
        optimizer.apply_gradients([(tf.constant(1.0, tf.float64), w)])
        applied.append(before - float(w.numpy()))
    np.testing.assert_allclose(applied, O.rates(warmup), atol=1e-7)


@pytest.mark.parametrize("case", [c for c in O.CASES if not (c[1] and (c[2] or c[3]))],
                         ids=O.case_id)
def test_trajectories_are_the_core_ones(case):
    # Keras keeps AdamW's betas as float32 (0.999 -> 0.99900001): its bias correction is off by ~1e-5 relative
    np.testing.assert_allclose(_trajectory(O.spec(*case)), O.expected(*case), atol=1e-6 if case[0] == "sgd" else 5e-6)


def test_momentum_with_decay_or_warmup_is_refused_before_work():
    spec = FineTuneSpec(training=O.spec("sgd", 0.9, 0.1, 0))
    problems = TensorFlowAdapter().refusals(spec)
    assert [p.path for p in problems] == ["training.momentum"]
    assert not TensorFlowAdapter().refusals(FineTuneSpec(training=O.spec("sgd", 0.9, 0.0, 0)))
