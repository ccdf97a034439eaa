"""A user's tf_keras MultiHeadAttention encoder ("user-encoder"): structure found from layer types and the
graph, pruning of every selected Dense and EinsumDense, head and neuron removal, quantization of the plan."""
from __future__ import annotations

import numpy as np
import pytest
from unicompress import zoo
from unicompress.api import compress
from unicompress.backend import TaskData
from unicompress.errors import StructureError
from unicompress.reference import pruning as ref
from unicompress.specs import PruningSpec

from unicompress_tensorflow import layers, pruning
from unicompress_tensorflow.backend import TensorFlowAdapter

keras = layers.keras
A = TensorFlowAdapter()
CFG = zoo.config_for("tiny-bert")
X = zoo.inputs_for("tiny-bert", CFG)
MHA = [f"enc{i}.mha.{p}" for i in range(2) for p in ("query", "key", "value", "attention_output")]
FFN = [f"enc{i}.ffn_{p}" for i in range(2) for p in ("up", "down")]


@pytest.fixture(scope="module")
def user():
    return A.build_model("user-encoder", seed=0, num_labels=3)


def _data():
    def train():
        for i in range(2):
            x = zoo.inputs_for("tiny-bert", CFG, seed=i)
            yield x, (x["input_ids"][:, 1] % 3).astype(np.int64)
    return TaskData(train=train, calibration=lambda: (x for x, _ in train()), num_labels=3)


def _run(model, *stages, data=None):
    recipe = {"name": "t", "backend": "tensorflow", "stages": list(stages)}
    return compress(model, recipe, data, progress=False, export_example=X)


def _checks(result):
    return {c["name"]: c for stage in result.report.stages for c in stage.checks}


def test_user_encoder_structure_is_found_from_layer_types(user):
    st = A.structure(user)
    assert (st.architecture, st.source, st.hidden_size, st.num_layers) == ("keras:MultiHeadAttention", "discovered",
                                                                           32, 2)
    assert [(a.block, a.query, a.output, a.num_heads, a.head_dim, a.kind, a.removable) for a in st.attention] == [
        (i, f"enc{i}.mha.query", f"enc{i}.mha.attention_output", 4, 8, "self", True) for i in range(2)]
    assert [(f.block, f.ffn_in, f.ffn_out, f.gate) for f in st.ffn] == [
        (i, f"enc{i}.ffn_up", f"enc{i}.ffn_down", None) for i in range(2)]
    assert (st.classifier, st.pooler, st.embeddings) == ("head", ("pool",), ("embedding",))
    roles = {i.name: i.role.value for i in A.layers(user)}
    assert [roles[n] for n in MHA[:4]] == ["query", "key", "value", "attention_output"]
    assert (roles["enc1.ffn_up"], roles["enc1.ffn_down"], roles["pool"], roles["head"]) == \
        ("ffn_in", "ffn_out", "pooler", "classifier")
    # the default selector: every projection of the blocks, not the head, pooler or embedding
    assert sorted(pruning.selected_dense(user, PruningSpec(sparsity=0.5))) == sorted(MHA + FFN)


def _decoder():
    """An encoder block, then a decoder block with self- and cross-attention and a gated (SwiGLU-like) FFN."""
    src = keras.Input((6, 16), name="src")
    tgt = keras.Input((5, 16), name="tgt")
    enc = keras.layers.MultiHeadAttention(2, 8, name="enc_attn")(src, src)
    enc = keras.layers.LayerNormalization(name="enc_ln")(src + enc)
    f = keras.layers.Dense(16, name="enc_down")(keras.layers.Dense(48, activation="relu", name="enc_up")(enc))
    enc = keras.layers.LayerNormalization(name="enc_ln2")(enc + f)
    y = keras.layers.MultiHeadAttention(2, 8, name="dec_self")(tgt, tgt)
    y = keras.layers.LayerNormalization(name="dec_ln")(tgt + y)
    c = keras.layers.MultiHeadAttention(2, 8, name="dec_cross")(y, enc)
    y = keras.layers.LayerNormalization(name="dec_ln2")(y + c)
    gate = keras.layers.Dense(40, activation="swish", name="dec_gate")(y)
    up = keras.layers.Dense(40, name="dec_up")(y)
    y = y + keras.layers.Dense(16, name="dec_down")(keras.layers.Multiply(name="glu")([gate, up]))
    out = keras.layers.Dense(4, name="lm_head")(y)
    return keras.Model({"src": src, "tgt": tgt}, out)


def test_cross_attention_gated_ffn_and_block_numbers():
    st = A.structure(_decoder())
    assert [(a.block, a.query.split(".")[0], a.kind) for a in st.attention] == [
        (0, "enc_attn", "self"), (1, "dec_self", "self"), (1, "dec_cross", "cross")]
    assert [(f.block, f.ffn_in, f.gate, f.ffn_out) for f in st.ffn] == [
        (0, "enc_up", None, "enc_down"), (1, "dec_up", "dec_gate", "dec_down")]
    assert (st.classifier, st.num_layers) == ("lm_head", 2)
    roles = {i.name: i.role.value for i in A.layers(_decoder())}
    assert (roles["dec_gate"], roles["dec_up"], roles["lm_head"]) == ("ffn_gate", "ffn_in", "classifier")


def test_unstructured_50_reaches_every_dense_and_einsum_dense(user):
    """The report: only the FFN Dense layers were pruned (0.8% overall). Now all twelve are at 50%, the
    MultiHeadAttention kernels through TFMOT's own wrapper."""
    spec = PruningSpec(sparsity=0.5)
    dense, mha, emulated = pruning.split_targets(user, MHA + FFN, spec)
    assert (sorted(dense), sorted(mha), emulated) == (sorted(FFN), ["enc0.mha", "enc1.mha"], [])
    before = A.weights(user)
    result = _run(user, {"technique": "pruning", "sparsity": 0.5})
    after = A.weights(result.model)
    for name in MHA + FFN:
        assert ref.sparsity_of(after[name]) == pytest.approx(0.5, abs=1e-9), name
        assert ref.mask_agreement(after[name] != 0, ref.magnitude_mask(before[name], 0.5)) > 0.99
    for name in ("head", "pool", "embedding"):
        assert ref.sparsity_of(after[name]) == 0.0
    assert _checks(result)["sparsity"]["passed"] is True


def test_narrowed_mha_wrapper_prunes_only_the_selected_projection(user):
    out = A.apply(A.copy(user), PruningSpec(sparsity=0.5, selector={"roles": ["query"]}))
    w = A.weights(out)
    assert [round(ref.sparsity_of(w[f"enc0.mha.{p}"]), 3) for p in ("query", "key", "value", "attention_output")] \
        == [0.5, 0.0, 0.0, 0.0]
    assert not hasattr(out.get_layer("enc0.mha"), "get_prunable_weights")  # the narrowed list is gone


def test_n_m_on_einsum_dense_kernels_groups_along_the_input(user):
    spec = PruningSpec(granularity="n_m", n=2, m=4)
    assert pruning.split_targets(user, MHA, spec)[2] == MHA  # TFMOT's N:M takes rank-2 kernels only: emulated
    before = A.weights(user)
    after = A.weights(_run(user, {"technique": "pruning", "granularity": "n_m", "n": 2, "m": 4}).model)
    for name in MHA + FFN:
        w = after[name]
        assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all(), name
        assert ref.mask_agreement(w != 0, ref.nm_mask(before[name], 2, 4)) == 1.0, name


def test_head_and_neuron_removal_drop_exact_parameters_and_equal_the_masked_model(user):
    head = {"technique": "pruning", "granularity": "head", "sparsity": 0.5}
    neuron = {"technique": "pruning", "granularity": "neuron", "sparsity": 0.5, "selector": {"roles": ["ffn_in"]}}
    removed = _run(user, {**head, "remove_pruned": True}, {**neuron, "remove_pruned": True})
    masked = _run(user, {**head, "remove_pruned": False}, {**neuron, "remove_pruned": False})
    small = removed.model
    # per head: Q/K/V kernels 32x8 and biases 8, O kernel 8x32; per neuron: 32 + 1 in ffn_up, 32 in ffn_down
    per_head, per_neuron = 3 * (32 * 8 + 8) + 8 * 32, 32 + 1 + 32
    assert user.count_params() - small.count_params() == 2 * 2 * per_head + 2 * 32 * per_neuron
    assert masked.model.count_params() == user.count_params()
    assert [small.get_layer(f"enc{i}.mha")._num_heads for i in range(2)] == [2, 2]
    assert [i.name for i in A.layers(small)] == [i.name for i in A.layers(user)]  # every layer keeps its name
    x = zoo.inputs_for("tiny-bert", CFG, seed=7)
    assert np.abs(A.run(small, x) - A.run(masked.model, x)).max() < 1e-4
    assert np.abs(A.run(small, x) - A.run(user, x)).max() > 1e-3  # something was removed
    for stage in removed.report.stages:
        checks = {c["name"]: c["passed"] for c in stage.checks}
        assert checks["parameters removed"] and checks["removed equals masked"], stage.checks


def test_blocks_that_cannot_be_removed_are_refused_before_work():
    ids = keras.Input((None,), dtype="int64", name="input_ids")
    x = keras.layers.Embedding(20, 16, name="embed")(ids)
    a = keras.layers.MultiHeadAttention(2, key_dim=8, value_dim=4, name="mha")(x, x)  # heads not one width
    x = keras.layers.LayerNormalization(name="ln")(x + a)
    model = keras.Model({"input_ids": ids}, keras.layers.Dense(2, name="cls")(x[:, 0]))
    info = A.structure(model).attention[0]
    assert not info.removable and "value_dim 4 differs from key_dim 8" in info.note
    before = A.weights(model)
    with pytest.raises(StructureError, match="value_dim 4 differs"):
        compress(model, {"name": "t", "backend": "tensorflow", "stages": [
            {"technique": "pruning", "granularity": "head", "sparsity": 0.5, "remove_pruned": True}]}, progress=False)
    assert all(np.array_equal(before[n], w) for n, w in A.weights(model).items())
    with pytest.raises(pruning.PruningNotSupportedError, match="one head width"):  # masks would be wrong too
        A.apply(A.copy(model), PruningSpec(granularity="head", sparsity=0.5, remove_pruned=False))


@pytest.mark.parametrize("mode", ["weight_only", "static"])
def test_quantization_takes_the_plan_classifier_and_pooler_stay_float(user, mode):
    stage = {"technique": "quantization", "mode": mode, "overrides": [{"pattern": "enc1.mha.value", "skip": True}]}
    result = _run(user, stage, data=_data())
    q = A.quantized_weights(result.model)
    assert set(q) == set(MHA + FFN) - {"enc1.mha.value"}
    assert q["enc0.mha.query"].q.shape == (32, 32) and q["enc0.mha.query"].scale.shape == (32,)  # per output unit
    bits = {s.name: s.bits for s in A.describe(result.model)}
    assert (bits["head"], bits["pool"], bits["enc1.mha.value"], bits["enc0.mha.value"]) == (32, 32, 32, 8)
    assert _checks(result)["quantized layers"]["passed"] is True
    rel = np.linalg.norm(A.run(result.model, X) - A.run(user, X)) / np.linalg.norm(A.run(user, X))
    assert rel < 0.1
    copy = A.copy(result.model)  # the quantized MultiHeadAttention wrappers rebuild with their kernels
    np.testing.assert_array_equal(A.run(copy, X), A.run(result.model, X))
    assert set(A.quantized_weights(copy)) == set(q)


def test_user_encoder_takes_no_weights_and_its_seed_decides_the_weights(user):
    with pytest.raises(ValueError, match="takes no weights"):
        A.build_model("user-encoder", weights={})
    np.testing.assert_array_equal(A.run(A.build_model("user-encoder", seed=0, num_labels=3), X), A.run(user, X))
    assert not np.allclose(A.run(A.build_model("user-encoder", seed=1, num_labels=3), X), A.run(user, X))
    assert "user-encoder" in A.zoo_models


@pytest.mark.slow
def test_user_encoder_exports_to_onnx(user, tmp_path):
    from unicompress.onnx.runtime import run_onnx

    path = A.export_onnx(user, tmp_path / "user.onnx", X)
    x = zoo.inputs_for("tiny-bert", CFG, batch=3, seed=2)
    np.testing.assert_allclose(run_onnx(path, x, threads=1), A.run(user, x), atol=1e-5)
