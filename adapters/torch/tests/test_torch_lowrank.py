"""Low-rank factorisation: ranks, energies and the optimal (Eckart-Young) error of the reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from unicompress_torch_testutil import tiny

from unicompress.backend import get_backend
from unicompress.backend.adapter import StageContext
from unicompress.reference import lowrank as R
from unicompress.specs import LowRankSpec
from unicompress_torch.layers import LowRankLinear

A = get_backend("torch")
FFN_IN = "bert.encoder.layer.0.intermediate.dense"


def _apply(model, **kw):
    ctx = StageContext()
    return A.apply(A.copy(model), LowRankSpec(**kw), None, ctx), ctx


def test_rank_replaces_linears_and_error_is_optimal():
    model, _, x = tiny()
    before = A.weights(model)
    out, ctx = _apply(model, rank=8)
    layers = {l.name: l for l in A.layers(out)}
    assert isinstance(out.get_submodule(FFN_IN), LowRankLinear)
    assert layers[f"{FFN_IN}.0"].shape == (8, 32) and layers[f"{FFN_IN}.1"].shape == (64, 8)
    assert layers[f"{FFN_IN}.0"].role.value == "ffn_in" and layers[f"{FFN_IN}.1"].role.value == "ffn_in"
    assert out.get_submodule(f"{FFN_IN}.0").bias is None and out.get_submodule(f"{FFN_IN}.1").bias is not None
    for name in [n for n, _, _ in __import__("unicompress").zoo.bert.linear_names(tiny()[1])
                 if n.startswith("bert.encoder")]:
        w = A.weights(out, [f"{name}.0", f"{name}.1"])
        approx = w[f"{name}.1"].astype(np.float64) @ w[f"{name}.0"].astype(np.float64)
        err = np.linalg.norm(approx - before[name])
        assert err == pytest.approx(R.optimal_error(before[name], 8), rel=1e-4, abs=1e-6)
        first, second = R.truncated_svd(before[name], 8)
        np.testing.assert_allclose(approx, second @ first, atol=1e-6)
    assert ctx.history[f"rank/{FFN_IN}"] == [(0, 8.0)]
    assert "classifier" in layers and "bert.pooler.dense" in layers  # default selector skips them
    assert np.isfinite(A.run(out, x)).all()


def test_parameter_count_drops():
    model, _, _ = tiny()
    out, _ = _apply(model, rank=4)
    saved = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in out.parameters())
    # per layer: 4 square (32x32 -> 4*(32+32)) and 2 FFN (64x32 -> 4*(64+32)) weight matrices
    assert saved == 2 * (4 * (1024 - 256) + 2 * (2048 - 384))


def test_energy_picks_the_reference_rank():
    model, _, _ = tiny()
    before = A.weights(model)
    out, ctx = _apply(model, energy=0.6)
    s = np.linalg.svd(before[FFN_IN], compute_uv=False)
    want = R.rank_for_energy(s, 0.6)
    assert ctx.history[f"rank/{FFN_IN}"][0][1] == want
    assert A.weights(out, [f"{FFN_IN}.0"])[f"{FFN_IN}.0"].shape == (want, 32)


def test_layers_that_would_not_save_are_skipped_unless_forced():
    model, _, _ = tiny()
    out, ctx = _apply(model, rank=20)  # 20 * (32 + 32) > 32 * 32; 20 * (64 + 32) < 2048
    assert isinstance(out.get_submodule(FFN_IN), LowRankLinear)
    assert type(out.get_submodule("bert.encoder.layer.0.attention.self.query")) is torch.nn.Linear
    forced, _ = _apply(model, rank=20, force=True)
    assert isinstance(forced.get_submodule("bert.encoder.layer.0.attention.self.query"), LowRankLinear)


def test_full_rank_is_exact_and_second_pass_leaves_factors_alone():
    model, _, x = tiny()
    full, _ = _apply(model, rank=32, force=True)
    np.testing.assert_allclose(A.run(full, x), A.run(model, x), atol=1e-5)
    again, ctx = A.apply(full, LowRankSpec(rank=4), None, StageContext()), None
    assert isinstance(again.get_submodule(FFN_IN), LowRankLinear)
    assert not isinstance(again.get_submodule(f"{FFN_IN}.0"), LowRankLinear)


def test_vit_low_rank():
    model, _, x = tiny("tiny-vit")
    out, _ = _apply(model, rank=4, selector={"include": ["*intermediate*", "*output.dense"],
                                             "roles": ["ffn_in", "ffn_out"]})
    assert isinstance(out.get_submodule("vit.encoder.layer.1.output.dense"), LowRankLinear)
    assert type(out.get_submodule("vit.encoder.layer.1.attention.self.query")) is torch.nn.Linear
    assert np.isfinite(A.run(out, x)).all()


def test_structured_pruning_after_low_rank_is_refused_clearly():
    from unicompress.errors import StructureError
    from unicompress.specs import PruningSpec

    model, _, x = tiny()
    out, _ = _apply(model, rank=4)
    assert A.structure(out).hidden_size == 32
    # the core planner refuses before work: the factorised Q/K/V are no longer whole projections
    with pytest.raises(StructureError, match="prune heads/neurons before the low_rank stage"):
        A.apply(out, PruningSpec(granularity="head", sparsity=0.5), None, StageContext())
    pruned = A.apply(out, PruningSpec(sparsity=0.5), None, StageContext())  # unstructured works on factors
    assert (A.weights(pruned)[f"{FFN_IN}.0"] == 0).mean() == 0.5



def test_nn_transformer_layers_are_refused_not_skipped_silently():
    """nn.MultiheadAttention holds Q/K/V as one bare parameter and reads out_proj.weight, and
    nn.TransformerEncoderLayer reads linear1/linear2.weight in its forward: two Linears cannot stand in for any of
    them. The planned layers are refused before the model changes (Q/K/V and O used to be skipped silently, and a
    factorised linear1 broke the forward)."""
    from unicompress.errors import LayerSelectionError
    from unicompress_torch_testutil import encoder_model

    model = encoder_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for roles in (None, ["ffn_in", "ffn_out"]):
        spec = LowRankSpec(rank=4, **({"selector": {"roles": roles}} if roles else {}))
        with pytest.raises(LayerSelectionError, match=r"(?s)encoder\.layers\.0\.linear1.*selector\.exclude") as err:
            A.apply(model, spec, None, StageContext())
        assert ("self_attn.in_proj" in str(err.value)) == (roles is None)
        assert ("self_attn.out_proj" in str(err.value)) == (roles is None)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    out, ctx = _apply(model, rank=2, selector={"include": ["classifier"], "roles": ["classifier"]})  # 2 * 19 < 48
    assert list(ctx.history) == ["rank/classifier"] and out(torch.randn(2, 5, 16)).shape == (2, 3)
