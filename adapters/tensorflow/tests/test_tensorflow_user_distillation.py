"""Feature distillation and student cutting on a user's tf_keras MultiHeadAttention encoder (issue #17).

The blocks come from the discovered structure and the functional graph, never from zoo names: the feature loss
pairs the layer map's blocks, a student is cut from the graph, and a model whose blocks cannot be found is
refused (StructureError) before any training step.
"""
from __future__ import annotations

import numpy as np
import pytest
import tf_keras as keras
from unicompress import zoo
from unicompress.backend import StageContext, TaskData
from unicompress.errors import StructureError
from unicompress.specs import DistillationSpec

from unicompress_tensorflow import distillation, layers, models
from unicompress_tensorflow.backend import TensorFlowAdapter

A = TensorFlowAdapter()
CFG = zoo.config_for("tiny-bert")


def _inputs(seed: int = 0) -> dict:
    return zoo.inputs_for("tiny-bert", CFG, seed=seed)


def _data(n: int = 2) -> TaskData:
    def train():
        for i in range(n):
            x = _inputs(i)
            yield x, (x["input_ids"][:, 1] % 3).astype(np.int64)
    return TaskData(train=train, num_labels=3)


def _hidden(model: keras.Model, name: str, x: dict) -> np.ndarray:
    return keras.Model(model.inputs, model.get_layer(name).output)(layers.to_tensors(model, x)).numpy()


def _block_params(model: keras.Model, prefix: str) -> int:
    return sum(layer.count_params() for layer in model.layers if layer.name.startswith(prefix))


def test_blocks_come_from_the_structure_not_zoo_names():
    user = models.build_user_encoder(0)
    blocks = distillation.find_blocks(user, layers.structure(user))
    assert [b.output.name for b in blocks] == ["enc0.ffn_norm", "enc1.ffn_norm"]  # post-LN: the norm after the add
    assert [type(b.attention).__name__ for b in blocks] == ["MultiHeadAttention"] * 2
    members = {layer.name for layer in user.layers if id(layer) in blocks[1].members}
    assert {"enc1.mha", "enc1.mha_norm", "enc1.ffn_up", "enc1.ffn_down", "enc1.ffn_norm"} <= members
    assert not any(n.startswith("enc0.") or n in ("embedding", "head", "pool") for n in members)
    # the zoo's blocks are found the same way: post-LN BERT ends in its LayerNorm, pre-LN ViT in the residual add
    bert, vit = models.build_model("tiny-bert"), models.build_model("tiny-vit")
    assert [b.output.name for b in distillation.find_blocks(bert, layers.structure(bert))] == \
        [f"bert.encoder.layer.{i}.output.LayerNorm" for i in range(2)]
    assert [b.output.name for b in distillation.find_blocks(vit, layers.structure(vit))] == \
        [f"vit.encoder.layer.{i}.output.residual" for i in range(2)]


def test_feature_loss_pairs_the_layer_map_blocks_and_falls():
    teacher, student = models.build_user_encoder(0), models.build_user_encoder(1)
    spec = DistillationSpec(kinds=["feature"], feature_loss="mse", alpha=1.0, layer_map=[(0, 1), (1, 0)],
                            training={"steps": 12, "learning_rate": 2e-3, "batch_size": 4})
    x = _inputs(0)
    # the first step's loss is the MEAN over the map's pairs of the hidden-state MSE over the real tokens
    # (attention_mask 1), before any update: the meaning on every backend (it was the sum over pairs, with padding
    # in, on TensorFlow only)
    real = np.asarray(x["attention_mask"], bool)
    assert not real.all()  # the batch has padding, so the mask matters here
    want = float(np.mean([np.mean(((_hidden(student, f"enc{s}.ffn_norm", x) - _hidden(teacher, f"enc{t}.ffn_norm", x))
                                   ** 2).mean(-1)[real]) for s, t in spec.layer_map]))
    ctx = StageContext(teacher=teacher)
    A.apply(student, spec, _data(1), ctx)
    assert [(int(s), int(t)) for s, t in ctx.history["layer_map"]] == [(0, 1), (1, 0)]
    losses = [v for _, v in ctx.history["loss"]]
    assert want > 0.1 and losses[0] == pytest.approx(want, rel=1e-4)
    assert max(losses[-3:]) < 0.8 * losses[0]


def test_student_cut_from_the_graph():
    teacher = models.build_user_encoder(0)
    st = layers.structure(teacher)
    block = _block_params(teacher, "enc1.")
    h, f = models.USER_ENCODER["hidden"], models.USER_ENCODER["ffn"]
    assert block == 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h  # Q/K/V/O, FFN, two LayerNorms
    first = distillation.cut_blocks(teacher, [0], st)
    assert first.count_params() == teacher.count_params() - block
    assert A.structure(first).num_layers == 1 and not any(la.name.startswith("enc1.") for la in first.layers)
    # keeping block 0 = the teacher's head on its block-0 hidden state
    x = _inputs(0)
    h0 = _hidden(teacher, "enc0.ffn_norm", x)
    keep = x["attention_mask"].astype(bool)
    pooled = teacher.get_layer("mean_pool")(h0, mask=keep)
    want = teacher.get_layer("head")(teacher.get_layer("pool")(pooled)).numpy()
    np.testing.assert_allclose(A.run(first, x), want, rtol=1e-5, atol=1e-6)
    # keeping block 1: its weights, under its own names; the teacher is untouched
    last = distillation.cut_blocks(teacher, [1], st)
    assert last.count_params() == teacher.count_params() - _block_params(teacher, "enc0.")
    w_t, w_s = A.weights(teacher), A.weights(last)
    assert set(w_s) == {n for n in w_t if not n.startswith("enc0.")}
    for name in w_s:
        np.testing.assert_array_equal(w_s[name], w_t[name])
    assert A.structure(teacher).num_layers == 2


def test_drop_layers_stage_trains_the_cut_student():
    teacher = models.build_user_encoder(0)
    spec = DistillationSpec(kinds=["feature"], feature_loss="mse", alpha=1.0, student={"keep_layers": [0]},
                            training={"steps": 10, "learning_rate": 2e-3})
    ctx = StageContext(teacher=teacher)
    before = A.weights(teacher)
    student = A.apply(teacher, spec, _data(1), ctx)
    assert [(int(s), int(t)) for s, t in ctx.history["layer_map"]] == [(0, 1)]  # the default map: last to last
    assert student.count_params() == teacher.count_params() - _block_params(teacher, "enc1.")
    losses = [v for _, v in ctx.history["loss"]]
    assert len(losses) == 10 and losses[-1] < losses[0]
    after = A.weights(teacher)
    assert all(np.array_equal(before[n], after[n]) for n in before)


def _dense_only() -> keras.Model:
    x = keras.Input((8,), name="x")
    y = keras.layers.Dense(16, activation="relu", name="up")(x)
    return keras.Model(x, keras.layers.Dense(3, name="head")(y))


def _dense_data() -> TaskData:
    rng = np.random.default_rng(0)
    return TaskData(train=lambda: iter([(rng.normal(size=(4, 8)).astype(np.float32), np.zeros(4, np.int64))]),
                    num_labels=3)


@pytest.mark.parametrize("student", [None, {"keep_layers": [0]}])
def test_feature_distillation_without_blocks_is_refused_before_training(student):
    model = _dense_only()
    spec = DistillationSpec(kinds=["feature"], alpha=1.0, student=student, training={"steps": 2})
    ctx = StageContext(teacher=_dense_only())
    with pytest.raises(StructureError):
        A.apply(model, spec, _dense_data(), ctx)
    assert "loss" not in ctx.history and "layer_map" not in ctx.history
    # response-only distillation needs no blocks and still trains
    ctx = StageContext(teacher=_dense_only())
    A.apply(_dense_only(), DistillationSpec(kinds=["response"], alpha=1.0, training={"steps": 2}), _dense_data(), ctx)
    assert len(ctx.history["loss"]) == 2


def test_relation_on_multi_head_attention_is_refused_before_training():
    spec = DistillationSpec(kinds=["relation"], alpha=1.0, training={"steps": 2})
    ctx = StageContext(teacher=models.build_user_encoder(0))
    with pytest.raises(StructureError, match="MultiHeadAttention"):
        A.apply(models.build_user_encoder(1), spec, _data(1), ctx)
    assert "loss" not in ctx.history
