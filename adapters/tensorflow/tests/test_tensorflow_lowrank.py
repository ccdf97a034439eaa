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
