"""Pruning through torch.nn.utils.prune: exact sparsity, agreement with the numpy reference, removal."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils import prune
from unicompress_torch_testutil import encoder_model, task_data, tiny

from unicompress.backend import get_backend
from unicompress.backend.adapter import StageContext
from unicompress.errors import LayerSelectionError, StructureError
from unicompress.reference import pruning as R
from unicompress.specs import FineTuneSpec, PruningSpec, TrainingSpec
from unicompress_torch.pruning import GradualPruner, NMPruning, make_permanent

A = get_backend("torch")


def _prune(model, **kw):
    spec = PruningSpec(**kw)
    ctx = StageContext()
    out = A.apply(A.copy(model), spec, None, ctx)
    return out, spec, ctx


def _selected(model, spec):
    return [l.name for l in spec.selector.select(A.layers(model))]


def test_unstructured_per_layer_matches_reference_exactly():
    model, _, x = tiny()
    before = A.weights(model)
    pruned, spec, _ = _prune(model, sparsity=0.5)
    after = A.weights(pruned)
    names = _selected(model, spec)
    assert len(names) == 12
    for n in names:
        assert R.sparsity_of(after[n]) == 0.5
        np.testing.assert_array_equal(after[n] != 0, R.magnitude_mask(before[n], 0.5))
        np.testing.assert_array_equal(after[n][after[n] != 0], before[n][after[n] != 0])  # kept weights intact
    assert R.sparsity_of(after["classifier"]) == 0.0  # head not selected by default
    assert not any(hasattr(m, "weight_mask") for m in pruned.modules())  # masks made permanent
    assert A.weights(model)["classifier"].all()  # the input model is untouched


def test_unstructured_global_matches_reference():
    model, _, _ = tiny()
    before = A.weights(model)
    pruned, spec, _ = _prune(model, sparsity=0.7, scope="global")
    names = _selected(model, spec)
    ref = R.global_magnitude_masks({n: before[n] for n in names}, 0.7)
    after = A.weights(pruned)
    total = sum(after[n].size for n in names)
    assert sum(int((after[n] == 0).sum()) for n in names) == round(0.7 * total)
    for n in names:
        np.testing.assert_array_equal(after[n] != 0, ref[n])
    per_layer = [R.sparsity_of(after[n]) for n in names]
    assert max(per_layer) - min(per_layer) > 0.05  # a global threshold does not give equal layers


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8)])
def test_n_m_matches_reference(n, m):
    model, _, _ = tiny()
    before = A.weights(model)
    pruned, spec, _ = _prune(model, granularity="n_m", n=n, m=m)
    after = A.weights(pruned)
    for name in _selected(model, spec):
        np.testing.assert_array_equal(after[name] != 0, R.nm_mask(before[name], n, m))
        groups = (after[name] == 0).reshape(-1, m).sum(axis=1)
        assert (groups >= n).all() and R.sparsity_of(after[name]) == n / m


def test_n_m_method_is_a_torch_pruning_method():
    lin = torch.nn.Linear(8, 3)
    NMPruning.apply(lin, "weight", n=2, m=4)
    assert isinstance(lin.weight_mask, torch.Tensor) and float(lin.weight_mask.mean()) == 0.5
    prune.remove(lin, "weight")
    with pytest.raises(ValueError, match="multiple of m"):
        NMPruning.apply(torch.nn.Linear(6, 2), "weight", n=2, m=4)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_block_matches_reference(norm):
    model, _, _ = tiny()
    before = A.weights(model)
    pruned, spec, _ = _prune(model, granularity="block", sparsity=0.5, block_shape=(4, 8), norm=norm)
    after = A.weights(pruned)
    for n in _selected(model, spec):
        np.testing.assert_array_equal(after[n] != 0, R.block_mask(before[n], (4, 8), 0.5, norm))
        assert R.sparsity_of(after[n]) == 0.5


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_neuron_masks_match_reference(norm):
    model, _, x = tiny()
    before = A.weights(model)
    pruned, spec, _ = _prune(model, granularity="neuron", sparsity=0.25, norm=norm, remove_pruned=False)
    after = A.weights(pruned)
    for i in range(2):
        w_in = f"bert.encoder.layer.{i}.intermediate.dense"
        w_out = f"bert.encoder.layer.{i}.output.dense"
        keep = R.neuron_mask(before[w_in], 0.25, norm)
        assert keep.sum() == 48
        np.testing.assert_array_equal((after[w_in] != 0).any(axis=1), keep)
        np.testing.assert_array_equal((after[w_out] != 0).any(axis=0), keep)
        bias = pruned.bert.encoder.layer[i].intermediate.dense.bias.detach().numpy()
        assert (bias[~keep] == 0).all()
    assert R.sparsity_of(after["bert.encoder.layer.0.attention.self.query"]) == 0.0  # heads are their own unit


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_head_masks_match_reference(norm):
    model, cfg, _ = tiny()
    before = A.weights(model)
    pruned, spec, _ = _prune(model, granularity="head", sparsity=0.5, norm=norm, remove_pruned=False)
    after = A.weights(pruned)
    for i in range(2):
        p = f"bert.encoder.layer.{i}.attention"
        q, k, v, o = (f"{p}.self.query", f"{p}.self.key", f"{p}.self.value", f"{p}.output.dense")
        keep = R.head_mask(before[q], before[k], before[v], before[o], 4, 0.5, norm)
        rows = R.head_mask_to_rows(keep, 8)
        for n in (q, k, v):
            np.testing.assert_array_equal((after[n] != 0).any(axis=1), rows)
        np.testing.assert_array_equal((after[o] != 0).any(axis=0), rows)


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("zoo_name", ["tiny-bert", "tiny-vit"])
@pytest.mark.parametrize("granularity", ["head", "neuron"])
def test_physical_removal_shrinks_and_equals_masked(zoo_name, granularity):
    model, cfg, x = tiny(zoo_name)
    removed, _, _ = _prune(model, granularity=granularity, sparsity=0.5)
    masked, _, _ = _prune(model, granularity=granularity, sparsity=0.5, remove_pruned=False)
    h, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    saved = layers * (3 * ((h // 2) * h + h // 2) + h * (h // 2)) if granularity == "head" else \
        layers * ((f // 2) * h + f // 2 + h * (f // 2))
    assert _params(model) - _params(removed) == saved
    np.testing.assert_allclose(A.run(removed, x), A.run(masked, x), atol=1e-6)
    s = A.structure(removed)
    if granularity == "head":
        assert [a.num_heads for a in s.attention] == [2, 2]
        if zoo_name == "tiny-bert":
            assert {k: len(v) for k, v in removed.config.pruned_heads.items()} == {0: 2, 1: 2}
    else:
        assert removed.config.intermediate_size == f // 2
        assert A.layers(removed)[0].shape  # still discoverable
        assert {l.name: l.shape for l in A.layers(removed)}[s.ffn[0].ffn_in] == (f // 2, h)


def test_removal_then_second_head_pruning_tracks_original_ids():
    model, _, x = tiny()
    once, _, _ = _prune(model, granularity="head", sparsity=0.5)
    twice = A.apply(A.copy(once), PruningSpec(granularity="head", sparsity=0.5), None, StageContext())
    assert [a.num_heads for a in A.structure(twice).attention] == [1, 1]
    assert all(len(v) == 3 for v in twice.config.pruned_heads.values())
    assert np.isfinite(A.run(twice, x)).all()


def test_transformer_encoder_neuron_removal_and_head_refusal():
    model = encoder_model()
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
    removed, _, _ = _prune(model, granularity="neuron", sparsity=0.5)
    masked, _, _ = _prune(model, granularity="neuron", sparsity=0.5, remove_pruned=False)
    assert removed.encoder.layers[0].linear1.out_features == 16
    assert _params(model) - _params(removed) == 2 * (16 * 16 + 16 + 16 * 16)
    np.testing.assert_allclose(A.run(removed, x), A.run(masked, x), atol=1e-5)
    unstructured, _, _ = _prune(model, sparsity=0.5)  # the packed in_proj is pruned as one tensor
    assert R.sparsity_of(A.weights(unstructured)["encoder.layers.0.self_attn.in_proj"]) == 0.5
    with pytest.raises(StructureError, match="nn.MultiheadAttention needs num_heads"):  # refused before work
        _prune(model, granularity="head", sparsity=0.5)


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_multihead_attention_head_masks_match_reference(norm):
    model = encoder_model(d_model=16, heads=4)
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
    before = A.weights(model)
    pruned, _, _ = _prune(model, granularity="head", sparsity=0.5, norm=norm, remove_pruned=False)
    after = A.weights(pruned)
    for i in range(2):
        packed, out = f"encoder.layers.{i}.self_attn.in_proj", f"encoder.layers.{i}.self_attn.out_proj"
        q, k, v = np.split(before[packed], 3)
        rows = R.head_mask_to_rows(R.head_mask(q, k, v, before[out], 4, 0.5, norm), 4)
        np.testing.assert_array_equal((after[packed] != 0).any(axis=1), np.tile(rows, 3))
        np.testing.assert_array_equal((after[out] != 0).any(axis=0), rows)
        bias = pruned.encoder.layers[i].self_attn.in_proj_bias.detach().numpy()
        assert (bias[~np.tile(rows, 3)] == 0).all()
    assert np.isfinite(A.run(pruned, x)).all()


def test_global_structured_keeps_one_unit_per_layer():
    model, _, x = tiny()
    pruned, _, _ = _prune(model, granularity="head", sparsity=0.75, scope="global", remove_pruned=False)
    heads = [int(((A.weights(pruned)[a.query] != 0).any(axis=1)).reshape(4, 8).any(axis=1).sum())
             for a in A.structure(model).attention]
    assert sum(heads) == 2 and min(heads) >= 1


def test_selector_choosing_nothing_is_an_error():
    model, _, _ = tiny()
    with pytest.raises(LayerSelectionError, match="matches no layer"):  # the core planner refuses
        _prune(model, sparsity=0.5, selector={"include": ["nothing.*"]})


# ---- schedules and training-time criteria -----------------------------------------------------------------
def test_polynomial_schedule_follows_reference():
    model, _, _ = tiny()
    spec = PruningSpec(sparsity=0.8, schedule={"kind": "polynomial", "begin_step": 2, "end_step": 10, "frequency": 2,
                                                "initial_sparsity": 0.1},
                       training=TrainingSpec(steps=12, learning_rate=1e-3))
    ctx = StageContext()
    pruned = A.apply(A.copy(model), spec, task_data(), ctx)
    points = dict(ctx.history["sparsity"])
    assert sorted(points) == [2, 4, 6, 8, 10, 12]
    for step in (2, 4, 6, 8, 10):
        want = R.polynomial_sparsity(step, 0.8, 0.1, 2, 10, 3.0)
        assert abs(points[step] - want) < 2e-3, (step, points[step], want)
    assert points[12] == pytest.approx(0.8, abs=1e-3)
    assert len(ctx.history["loss"]) == 12
    names = _selected(model, spec)
    after = A.weights(pruned)
    assert all(int((after[n] == 0).sum()) == round(0.8 * after[n].size) for n in names)


def test_gradual_pruner_in_a_users_own_loop_with_movement():
    """The public GradualPruner works in a hand-written loop; movement keeps the highest -w*grad sums."""
    model, _, _ = tiny()
    model = A.copy(model)
    spec = PruningSpec(sparsity=0.5, criterion="movement", training=TrainingSpec(steps=4))
    pruner = GradualPruner(model, spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = task_data()
    from unicompress_torch.training import cross_entropy_loss, to_torch_inputs
    for step, (x, y) in enumerate(list(data.train())[:4]):
        pruner.step(step)
        opt.zero_grad()
        cross_entropy_loss(model, to_torch_inputs(x), torch.as_tensor(y)).backward()
        pruner.after_backward(step)
        opt.step()
    scores = {t.name: pruner.movement[(id(t.module), t.param)].clone() for t in pruner.targets.tensors}
    pruner.finish()
    for name, s in scores.items():
        w = A.weights(model, [name])[name]
        flat = s.reshape(-1).numpy()
        kept = w.reshape(-1) != 0
        assert kept.mean() == 0.5
        assert flat[kept].min() >= flat[~kept].max()  # exactly the top half of the movement scores
    magnitude = A.apply(A.copy(tiny()[0]), PruningSpec(sparsity=0.5), None, StageContext())
    name = next(iter(scores))
    assert R.mask_agreement(A.weights(model)[name] != 0, A.weights(magnitude)[name] != 0) < 0.95


def test_l1_regularized_shrinks_weights_then_prunes_exactly():
    model, _, _ = tiny()
    tr = TrainingSpec(steps=6, learning_rate=0.05, optimizer="sgd")
    l1 = A.apply(A.copy(model), PruningSpec(sparsity=0.5, criterion="l1_regularized", regularization=100.0,
                                             training=tr), task_data(), StageContext())
    # the same training without the penalty, then the same magnitude pruning
    tuned = A.apply(A.copy(model), FineTuneSpec(training=tr), task_data(), StageContext())
    plain = A.apply(tuned, PruningSpec(sparsity=0.5), None, StageContext())
    name = "bert.encoder.layer.0.intermediate.dense"
    w_l1, w_plain = A.weights(l1)[name], A.weights(plain)[name]
    assert R.sparsity_of(w_l1) == 0.5
    assert np.abs(w_l1).sum() < 0.8 * np.abs(w_plain).sum()


@pytest.mark.parametrize("granularity,kw", [("unstructured", {"sparsity": 0.5}), ("head", {"sparsity": 0.5}),
                                            ("neuron", {"sparsity": 0.5})])
def test_l0_gates_learn_and_prune_to_target(granularity, kw):
    model, _, x = tiny()
    spec = PruningSpec(granularity=granularity, criterion="l0_regularized", regularization=5.0,
                       training=TrainingSpec(steps=8, learning_rate=0.05), remove_pruned=False, **kw)
    copy = A.copy(model)
    pruner = GradualPruner(copy, spec)
    gates = list(pruner.gates.values())
    assert gates and all(torch.nn.utils.parametrize.is_parametrized(g.target.module) for g in gates)
    from unicompress_torch.training import train_loop
    train_loop(copy, task_data(), spec.training, StageContext(), loss_fn=pruner.loss_fn(), on_step=pruner.step,
               extra_params=pruner.extra_params())
    assert float(torch.cat([g.log_alpha.detach().reshape(-1) for g in gates]).mean()) < 3.0  # penalty pulled them
    pruner.finish()
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in copy.modules())
    assert pruner.current == pytest.approx(0.5, abs=1e-9)
    assert np.isfinite(A.run(copy, x)).all()


def test_make_permanent_removes_every_hook():
    lin = torch.nn.Linear(8, 4)
    prune.l1_unstructured(lin, "weight", 0.5)
    prune.l1_unstructured(lin, "weight", 0.5)  # a PruningContainer
    make_permanent(lin)
    assert not hasattr(lin, "weight_orig") and float((lin.weight == 0).float().mean()) == 0.75


GRANULARITIES = [("unstructured", {"sparsity": 0.6}), ("n_m", {"n": 2, "m": 4}), ("neuron", {"sparsity": 0.5}),
                 ("head", {"sparsity": 0.5}), ("block", {"sparsity": 0.5, "block_shape": (4, 4)})]


@pytest.mark.parametrize("criterion", ["magnitude", "movement", "l1_regularized", "l0_regularized"])
@pytest.mark.parametrize("granularity,kw", GRANULARITIES)
def test_every_criterion_and_granularity_trains_to_the_exact_target(granularity, kw, criterion):
    model, _, x = tiny()
    spec = PruningSpec(granularity=granularity, criterion=criterion, regularization=0.5, remove_pruned=False,
                       schedule={"kind": "polynomial", "end_step": 4, "frequency": 2},
                       training=TrainingSpec(steps=4, learning_rate=1e-2), **kw)
    ctx = StageContext()
    pruned = A.apply(A.copy(model), spec, task_data(batches=2), ctx)
    assert [s for s, _ in ctx.history["sparsity"]] == [0, 2, 4]
    assert ctx.history["sparsity"][-1][1] == pytest.approx(spec.target_sparsity, abs=1e-3)  # per-layer rounding
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) or hasattr(m, "weight_mask")
                   for m in pruned.modules())
    assert np.isfinite(A.run(pruned, x)).all()


@pytest.mark.parametrize("granularity,kw", GRANULARITIES)
def test_gradual_pruning_on_transformer_encoder(granularity, kw):
    """nn.MultiheadAttention reads out_proj.weight without calling out_proj: masks must still train."""
    model = encoder_model(heads=4)
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(4, 5, 16)).astype(np.float32), rng.integers(0, 3, 4)) for _ in range(2)]
    kw = {**kw, "remove_pruned": False} if granularity == "head" else kw
    spec = PruningSpec(granularity=granularity, schedule={"kind": "polynomial", "end_step": 4, "frequency": 2},
                       training=TrainingSpec(steps=4, learning_rate=1e-2), **kw)
    ctx = StageContext()
    from unicompress.backend.types import TaskData
    pruned = A.apply(A.copy(model), spec, TaskData(train=lambda: iter(batches)), ctx)
    assert ctx.history["sparsity"][-1][1] == pytest.approx(spec.target_sparsity, abs=1e-3)  # per-layer rounding
    before = A.weights(model)["encoder.layers.0.self_attn.out_proj"]
    after = A.weights(pruned)["encoder.layers.0.self_attn.out_proj"]
    assert not np.allclose(after[after != 0], before[after != 0])  # out_proj was trained through its mask
    assert np.isfinite(A.run(pruned, batches[0][0])).all()


def test_global_neuron_scope_ranks_across_layers():
    model, _, _ = tiny()
    before = A.weights(model)
    pruned, _, _ = _prune(model, granularity="neuron", scope="global", sparsity=0.5, remove_pruned=False)
    after = A.weights(pruned)
    names = [f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2)]
    norms = np.concatenate([np.linalg.norm(before[n], axis=1) for n in names])
    keep = np.concatenate([(after[n] != 0).any(axis=1) for n in names])
    assert keep.sum() == 64
    assert norms[keep].min() >= norms[~keep].max()  # one ranking over both layers


def test_global_block_scope_ranks_across_layers():
    model, _, _ = tiny()
    before = A.weights(model)
    pruned, spec, _ = _prune(model, granularity="block", scope="global", sparsity=0.5, block_shape=(8, 8),
                             remove_pruned=False)
    after = A.weights(pruned)
    scores, kept = [], []
    for n in _selected(model, spec):
        r, c = before[n].shape
        scores.append(np.linalg.norm(before[n].reshape(r // 8, 8, c // 8, 8), axis=(1, 3)).reshape(-1))
        kept.append((after[n] != 0).reshape(r // 8, 8, c // 8, 8).any(axis=(1, 3)).reshape(-1))
    scores, kept = np.concatenate(scores), np.concatenate(kept)
    assert kept.sum() == len(kept) // 2 and scores[kept].min() >= scores[~kept].max()
