"""Distillation with a frozen teacher: student by dropping layers, the three loss kinds, training."""
from __future__ import annotations

import numpy as np
import pytest
from unicompress import zoo
from unicompress.backend import StageContext, TaskData
from unicompress.specs import DistillationSpec, FineTuneSpec, PruningSpec

from unicompress_tensorflow import distillation, layers, models
from unicompress_tensorflow.backend import TensorFlowAdapter

A = TensorFlowAdapter()
CFG = zoo.config_for("tiny-bert")


def _data(n=2):
    def train():
        for i in range(n):
            x = zoo.inputs_for("tiny-bert", CFG, seed=i)
            yield x, (x["input_ids"][:, 1] % 3).astype(np.int64)
    return TaskData(train=train, num_labels=3)


def test_student_keeps_the_chosen_blocks():
    teacher = models.build_model("tiny-bert")
    student, keep = distillation.build_student(teacher, distillation.StudentSpec(keep_layers=[1]))
    assert keep == [1] and len(layers.structure(student).attention) == 1
    w_t = layers.get_weights(teacher, ["bert.encoder.layer.1.output.dense"])
    w_s = layers.get_weights(student, ["bert.encoder.layer.0.output.dense"])
    np.testing.assert_array_equal(w_s["bert.encoder.layer.0.output.dense"], w_t["bert.encoder.layer.1.output.dense"])
    # num_layers follows the core's choice (StudentSpec.layers_to_keep)
    _, keep = distillation.build_student(teacher, distillation.StudentSpec(num_layers=1))
    assert keep == [1]


def test_distillation_loss_is_zero_for_an_identical_student():
    """alpha=1 and a student equal to the teacher: response, feature and relation losses all vanish."""
    teacher = models.build_model("tiny-bert")
    spec = DistillationSpec(kinds=["response", "feature", "relation"], alpha=1.0, student={"num_layers": 2},
                            training={"steps": 1, "learning_rate": 1e-9})
    ctx = StageContext(teacher=teacher)
    A.apply(A.copy(teacher), spec, _data(), ctx)
    assert ctx.history["loss"][0][1] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kinds,feature_loss", [(["response"], "mse"), (["feature", "relation"], "cosine")])
def test_distillation_trains_a_smaller_student(kinds, feature_loss):
    teacher = models.build_model("tiny-bert")
    spec = DistillationSpec(kinds=kinds, feature_loss=feature_loss, temperature=2.0, alpha=0.9,
                            student={"num_layers": 1}, training={"steps": 8, "learning_rate": 1e-3})
    ctx = StageContext(teacher=teacher)
    student = A.apply(A.copy(teacher), spec, _data(1), ctx)
    assert len(layers.structure(student).attention) == 1
    losses = [v for _, v in ctx.history["loss"]]
    assert len(losses) == 8 and max(losses[-3:]) < losses[0]
    # the teacher stayed frozen
    fresh = models.build_model("tiny-bert")
    np.testing.assert_array_equal(A.weights(teacher)["classifier"], A.weights(fresh)["classifier"])


def test_finetune_keeps_pruned_weights_zero():
    model = A.apply(models.build_model("tiny-bert"), PruningSpec(sparsity=0.5))
    q = "bert.encoder.layer.0.attention.self.query"
    before = A.weights(model, [q])[q]
    ctx = StageContext()
    out = A.apply(model, FineTuneSpec(training={"steps": 3, "learning_rate": 1e-2}), _data(), ctx)
    after = A.weights(out, [q])[q]
    assert ((after == 0) == (before == 0)).all() and not np.array_equal(after, before)
    assert len(ctx.history["loss"]) == 3
