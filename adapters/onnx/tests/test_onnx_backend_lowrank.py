"""SVD factorisation of MatMul/Gemm initializers into two MatMuls."""
from __future__ import annotations

import numpy as np
import pytest
from onnx_backend_testutil import adapter, encoder_linears, tiny

from unicompress import reference as ref
from unicompress.backend.adapter import StageContext
from unicompress.onnx.inspect import factorised_matmuls
from unicompress.specs import LowRankSpec


def _factorise(spec, name="tiny-bert"):
    a = adapter()
    model, cfg, x = tiny(name)
    ctx = StageContext()
    out = a.apply(a.copy(model), spec, None, ctx)
    return a, model, cfg, x, out, ctx


def test_rank_8_gives_two_factors_with_the_optimal_error():
    a, model, cfg, x, out, ctx = _factorise(LowRankSpec(rank=8))
    before, after = a.weights(model), a.weights(out)
    for n in encoder_linears(cfg):
        first, second = after[f"{n}.0"], after[f"{n}.1"]
        assert first.shape == (8, before[n].shape[1]) and second.shape == (before[n].shape[0], 8)
        err = np.linalg.norm(before[n].astype(np.float64) - second.astype(np.float64) @ first)
        assert err == pytest.approx(ref.optimal_error(before[n], 8), rel=1e-4)
        assert n not in after
    assert len(factorised_matmuls(out)) == len(encoder_linears(cfg))
    assert {la.name: la.role for la in a.layers(out)}["bert.encoder.layer.0.output.dense.1"].value == "ffn_out"
    assert ctx.history["rank/bert.encoder.layer.0.intermediate.dense"] == [(0, 8.0)]
    rel = np.linalg.norm(a.run(out, x) - a.run(model, x)) / np.linalg.norm(a.run(model, x))
    assert rel < 0.05


def test_full_rank_product_reproduces_the_outputs():
    a, model, _, x, out, _ = _factorise(LowRankSpec(rank=32, force=True, selector={"include": ["*.query"]}))
    assert np.abs(a.run(out, x) - a.run(model, x)).max() < 1e-5


def test_energy_rule_and_layers_that_would_not_save_parameters():
    a, model, cfg, _, out, ctx = _factorise(LowRankSpec(energy=0.9))
    before, after = a.weights(model), a.weights(out)
    for n in encoder_linears(cfg):
        r = ref.rank_for_energy(np.linalg.svd(before[n].astype(np.float64), compute_uv=False), 0.9)
        if ref.saves_parameters(before[n].shape, r):
            assert after[f"{n}.0"].shape[0] == r
        else:
            assert np.array_equal(after[n], before[n])  # left whole


def test_gemm_head_and_vit():
    spec = LowRankSpec(rank=2, selector={"include": ["classifier"], "roles": ["classifier"]})
    a, model, _, x, out, _ = _factorise(spec, "tiny-vit")
    after = a.weights(out)
    assert after["classifier.0"].shape == (2, 32) and after["classifier.1"].shape == (10, 2)
    assert a.run(out, x).shape == (4, 10)


def test_a_second_pass_leaves_factors_alone():
    a, _, _, _, out, _ = _factorise(LowRankSpec(rank=8))
    again = a.apply(a.copy(out), LowRankSpec(rank=4, force=True), None, StageContext())
    assert {k: v.shape for k, v in a.weights(again).items()} == {k: v.shape for k, v in a.weights(out).items()}
