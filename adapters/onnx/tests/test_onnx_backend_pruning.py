"""Magnitude pruning of MatMul/Gemm initializers: exact sparsity on exactly the planned layers."""
from __future__ import annotations

import numpy as np
import pytest
from onnx_backend_testutil import adapter, encoder_linears, tiny

from unicompress import reference as ref
from unicompress.backend.adapter import StageContext
from unicompress.errors import SpecValidationError
from unicompress.specs import PruningSpec


def _prune(spec, name="tiny-bert"):
    a = adapter()
    model, cfg, x = tiny(name)
    before = a.weights(model)
    out = a.apply(a.copy(model), spec, None, StageContext())
    return a, model, cfg, before, a.weights(out), out


def test_unstructured_per_layer_is_exact_on_each_planned_layer_only():
    a, model, cfg, before, after, out = _prune(PruningSpec(sparsity=0.5))
    planned = encoder_linears(cfg)
    for name, w in after.items():
        if name in planned:
            assert (w == 0).mean() == 0.5, name
            assert np.array_equal(w != 0, ref.magnitude_mask(before[name], 0.5)), name
            assert np.array_equal(w[w != 0], before[name][w != 0])  # survivors untouched
        else:
            assert np.array_equal(w, before[name]), name  # embeddings, pooler, classifier
    assert sum(s.params - s.nonzero for s in a.describe(out)) == sum(before[n].size for n in planned) // 2


def test_global_scope_prunes_one_threshold_across_layers():
    a, model, cfg, before, after, _ = _prune(PruningSpec(sparsity=0.5, scope="global"))
    planned = encoder_linears(cfg)
    zeros = sum(int((after[n] == 0).sum()) for n in planned)
    assert zeros == sum(before[n].size for n in planned) // 2
    per_layer = {round(float((after[n] == 0).mean()), 3) for n in planned}
    assert len(per_layer) > 1  # one threshold: layers differ
    masks = ref.global_magnitude_masks({n: before[n] for n in planned}, 0.5)
    assert all(np.array_equal(after[n] != 0, masks[n]) for n in planned)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_n_of_m_holds_in_every_group(n, m):
    _, _, cfg, before, after, _ = _prune(PruningSpec(granularity="n_m", n=n, m=m))
    for name in encoder_linears(cfg):
        zeros = (after[name] == 0).reshape(-1, m).sum(axis=1)
        assert (zeros == n).all(), name
        assert np.array_equal(after[name] != 0, ref.nm_mask(before[name], n, m))


def test_blocks_are_whole_and_match_the_reference():
    _, _, cfg, before, after, _ = _prune(PruningSpec(granularity="block", sparsity=0.5, block_shape=(4, 8)))
    for name in encoder_linears(cfg):
        assert np.array_equal(after[name] != 0, ref.block_mask(before[name], (4, 8), 0.5)), name


def test_selector_and_gemm_layers():
    """Only the selected layers change; Gemm (transB=1) layers prune in the neutral layout too."""
    spec = PruningSpec(sparsity=0.75, selector={"include": ["classifier", "*.intermediate.dense"],
                                                "roles": ["ffn_in", "classifier"]})
    _, _, cfg, before, after, _ = _prune(spec)
    changed = {n for n in after if not np.array_equal(after[n], before[n])}
    assert changed == {"classifier", *(f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2))}
    assert (after["classifier"] == 0).mean() == pytest.approx(0.75, abs=1 / 96)


def test_vit_pruning_leaves_the_patch_embedding():
    _, _, _, before, after, _ = _prune(PruningSpec(sparsity=0.7), "tiny-vit")
    assert np.array_equal(after["vit.embeddings.patch_embeddings"], before["vit.embeddings.patch_embeddings"])
    assert (after["vit.encoder.layer.0.output.dense"] == 0).mean() == pytest.approx(0.7, abs=1 / 2048)


def test_planner_refuses_m_that_does_not_tile_the_input_before_work():
    a = adapter()
    model, _, _ = tiny()
    before = a.weights(model)
    with pytest.raises(SpecValidationError, match="not a multiple of m=6"):
        a.apply(model, PruningSpec(granularity="n_m", n=2, m=6), None, StageContext())
    assert all(np.array_equal(before[n], w) for n, w in a.weights(model).items())


def test_head_pruning_is_refused_without_a_structure():
    from unicompress.errors import CapabilityError

    a = adapter()
    model, _, _ = tiny()
    with pytest.raises(CapabilityError, match="pruning.granularity"):
        a.apply(model, PruningSpec(granularity="head", sparsity=0.25), None, StageContext())
