"""Low-rank SVD of Dense layers: ranks, optimal error, smaller model, ONNX-ready structure."""
from __future__ import annotations

import numpy as np
import pytest
from unicompress import zoo
from unicompress.reference import lowrank as ref
from unicompress.specs import LowRankSpec

from unicompress_tensorflow import layers, models
from unicompress_tensorflow.backend import TensorFlowAdapter

A = TensorFlowAdapter()
FFN = "bert.encoder.layer.0.intermediate.dense"


def test_rank_factorisation_is_optimal_and_changes_the_layers():
    model = models.build_model("tiny-bert")
    W = layers.get_weights(model)
    out = A.apply(A.copy(model), LowRankSpec(rank=4))
    names = {i.name: i for i in A.layers(out)}
    assert names[f"{FFN}.0"].shape == (4, 32) and names[f"{FFN}.1"].shape == (64, 4)
    assert names[f"{FFN}.0"].role.value == "ffn_in" and FFN not in names
    got = A.weights(out, [f"{FFN}.0", f"{FFN}.1"])
    approx = got[f"{FFN}.1"] @ got[f"{FFN}.0"]
    assert np.linalg.norm(approx - W[FFN]) == pytest.approx(ref.optimal_error(W[FFN], 4), rel=1e-4)
    assert "classifier" in names and "classifier.0" not in names  # default selector skips the head
    # the full-rank equivalent gives the same logits
    x = zoo.inputs_for("tiny-bert", zoo.config_for("tiny-bert"))
    full = A.apply(A.copy(model), LowRankSpec(rank=32, force=True))
    np.testing.assert_allclose(A.run(full, x), A.run(model, x), atol=1e-5)


def test_energy_picks_the_reference_rank_and_skips_unprofitable_layers():
    model = models.build_model("tiny-bert")
    W = layers.get_weights(model)
    out = A.apply(A.copy(model), LowRankSpec(energy=0.5))
    s = np.linalg.svd(W[FFN], compute_uv=False)
    r = ref.rank_for_energy(s, 0.5)
    names = {i.name: i for i in A.layers(out)}
    if ref.saves_parameters(W[FFN].shape, r):
        assert names[f"{FFN}.0"].shape == (r, 32)
    q = "bert.encoder.layer.0.attention.self.query"
    rq = ref.rank_for_energy(np.linalg.svd(W[q], compute_uv=False), 0.5)
    assert (q in names) == (not ref.saves_parameters(W[q].shape, rq))


def test_low_rank_export_holds_the_factorised_matmul_pairs(tmp_path):
    from unicompress.onnx import factorised_matmuls
    model = A.apply(models.build_model("tiny-bert"), LowRankSpec(rank=4))
    x = zoo.inputs_for("tiny-bert", zoo.config_for("tiny-bert"))
    path = A.export_onnx(model, tmp_path / "lr.onnx", x)
    pairs = factorised_matmuls(str(path))
    assert len(pairs) == 12 and {p.rank for p in pairs} == {4}


# ---- the plan is the core's: EinsumDense projections and nested Dense layers are never skipped silently -----
MHA = [f"enc{i}.mha.{p}" for i in range(2) for p in ("query", "key", "value", "attention_output")]
FFN_PAIRS = [f"enc{i}.ffn_{p}" for i in range(2) for p in ("up", "down")]


@pytest.fixture(scope="module")
def user():
    return A.build_model("user-encoder", seed=0, num_labels=3)


def _compress(model, **stage):
    from unicompress.api import compress

    x = zoo.inputs_for("tiny-bert", zoo.config_for("tiny-bert"))
    return compress(model, {"name": "t", "backend": "tensorflow", "stages": [{"technique": "low_rank", **stage}]},
                    None, progress=False, export_example=x)


def test_default_selector_on_a_mha_encoder_is_refused_naming_the_einsum_projections(user):
    from unicompress.errors import LayerSelectionError

    with pytest.raises(LayerSelectionError) as err:
        _compress(user, rank=4)
    message = str(err.value)
    assert "chooses 8 layer(s)" in message and "allow_partial" in message
    assert all(f"{n}: layer kind 'einsum_dense'" in message for n in MHA)
    assert not any(f"{n}:" in message for n in FFN_PAIRS)


def test_ffn_roles_factorise_exactly_the_ffn_dense_layers(user):
    before = A.weights(user)
    result = _compress(user, rank=4, selector={"roles": ["ffn_in", "ffn_out"]})
    stage = result.report.stages[0]
    assert stage.plan["selected"] == 4 and stage.plan["skipped"] == []
    assert {c["name"]: c["passed"] for c in stage.checks} == {"output shape": True, "factorised layers": True}
    assert stage.history == {f"rank/{n}": [(0, 4.0)] for n in FFN_PAIRS}
    after = A.weights(result.model)
    for n in FFN_PAIRS:
        assert n not in after and after[f"{n}.0"].shape[0] == 4
        err = np.linalg.norm(after[f"{n}.1"].astype(np.float64) @ after[f"{n}.0"] - before[n])
        assert err == pytest.approx(ref.optimal_error(before[n], 4), rel=1e-4)
    for n in MHA + ["pool", "head"]:
        np.testing.assert_array_equal(after[n], before[n])
    # 4 layers of 64x32 -> 4 * (64 + 32)
    assert result.report.before.params - result.report.after.params == 4 * (2048 - 384)


def test_allow_partial_lists_the_einsum_projections_in_the_report(user):
    result = _compress(user, rank=4, selector={"allow_partial": True})
    plan = result.report.stages[0].plan
    assert plan["selected"] == 4
    assert [n for n, _ in plan["skipped"]] == MHA
    assert all("einsum_dense" in why for _, why in plan["skipped"])
    assert {i.name for i in A.layers(result.model)} >= {f"{n}.{k}" for n in FFN_PAIRS for k in (0, 1)} | set(MHA)


def test_a_dense_nested_in_another_model_is_refused_or_listed():
    from unicompress.errors import LayerSelectionError
    from unicompress.planner import plan_stage

    keras = layers.keras
    inner = keras.Sequential([keras.layers.Dense(16, name="inner_fc")], name="block")
    x = keras.Input((8,))
    out = keras.layers.Dense(3, name="out")(inner(keras.layers.Dense(16, name="fc")(x)))
    model = keras.Model(x, out)
    assert {i.name: i.kind for i in A.layers(model)} == {"fc": "linear", "block.inner_fc": "nested_dense",
                                                         "out": "linear"}
    with pytest.raises(LayerSelectionError, match="block.inner_fc: layer kind 'nested_dense'"):
        plan_stage(A, model, LowRankSpec(rank=2))
    plan = plan_stage(A, model, LowRankSpec(rank=2, selector={"allow_partial": True}))
    assert plan.selected == ("fc", "out") and plan.skipped[0][0] == "block.inner_fc"
    new = A.apply(A.copy(model), LowRankSpec(rank=2, selector={"allow_partial": True}))
    assert {i.name: i.shape for i in A.layers(new)} == {"fc.0": (2, 8), "fc.1": (16, 2), "block.inner_fc": (16, 16),
                                                        "out.0": (2, 16), "out.1": (3, 2)}
