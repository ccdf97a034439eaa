"""Pruning through PaddleSlim / paddle.incubate.asp on the tiny zoo BERT, checked against unicompress.reference."""
import contextlib
import io

import numpy as np
import pytest

import paddle
from unicompress import reference as R
from unicompress import zoo
from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import PruningSpec
from unicompress_paddle.backend import PaddleAdapter
from unicompress_paddle.compat import paddleslim

A = PaddleAdapter()
CFG = zoo.config_for("tiny-bert")
X = zoo.inputs_for("tiny-bert", CFG)
ENCODER = [n for n, r, _ in zoo.bert.linear_names(CFG) if r not in ("pooler", "classifier")]


def task_data(steps=4):
    rng = np.random.default_rng(0)

    def train():
        for _ in range(steps):
            x = zoo.inputs_for("tiny-bert", CFG, batch=4, length=8, seed=int(rng.integers(100)))
            yield x, rng.integers(0, 3, 4).astype(np.int64)
    return TaskData(train=train, num_labels=3)


def pruned(spec, data=None, ctx=None):
    m = A.build_model("tiny-bert")
    before = A.weights(m)
    out = A.apply(A.copy(m), PruningSpec.model_validate(spec), data, ctx or StageContext())
    assert all(np.array_equal(before[k], v) for k, v in A.weights(m).items())  # input model untouched
    return before, out


def test_paddleslim_unstructured_pruner_is_broken_on_paddle3_and_the_fixed_subclass_works():
    slim = paddleslim()
    m = A.build_model("tiny-bert")
    ids, mask = paddle.to_tensor(X["input_ids"]), paddle.to_tensor(X["attention_mask"])
    with contextlib.redirect_stdout(io.StringIO()):
        broken = slim.UnstructuredPruner(m, mode="ratio", ratio=0.5)
    broken.step()
    with pytest.raises(TypeError, match="Type promotion"):
        m(ids, mask)  # the forward pre-hook multiplies float32 weights by the now-bool mask
    from unicompress_paddle.compat import fixed_unstructured_pruner_class
    m = A.build_model("tiny-bert")
    with contextlib.redirect_stdout(io.StringIO()):
        fixed = fixed_unstructured_pruner_class()(m, mode="ratio", ratio=0.5, local_sparsity=True)
    fixed.step()
    assert m(ids, mask).shape == [4, 3]
    fixed.detach()
    w = m.bert.encoder.layer[0].attention.self.query.weight.numpy()
    assert R.sparsity_of(w) == 0.5 and not any(l._buffers or l._forward_pre_hooks for l in m.sublayers())


@pytest.mark.parametrize("scope", ["per_layer", "global"])
def test_unstructured_magnitude_matches_reference(scope):
    before, m = pruned({"technique": "pruning", "sparsity": 0.6, "scope": scope})
    after = A.weights(m)
    sel = {n: before[n] for n in ENCODER}
    ref = {n: R.magnitude_mask(w, 0.6) for n, w in sel.items()} if scope == "per_layer" \
        else R.global_magnitude_masks(sel, 0.6)
    for n in ENCODER:
        assert np.array_equal(after[n] != 0, ref[n]), n
    total = sum(after[n].size for n in ENCODER)
    assert abs(sum((after[n] == 0).sum() for n in ENCODER) / total - 0.6) < 1e-3
    assert R.sparsity_of(after["classifier"]) == 0 and R.sparsity_of(after["bert.pooler.dense"]) == 0
    # the pruner's hooks and mask buffers are gone: the model runs and exports as a plain model
    assert not any(l._forward_pre_hooks or l._buffers for l in m.sublayers())


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_block_pruning_matches_reference(norm):
    before, m = pruned({"technique": "pruning", "granularity": "block", "block_shape": [4, 8], "sparsity": 0.5,
                        "norm": norm})
    after = A.weights(m)
    for n in ENCODER:
        assert np.array_equal(after[n] != 0, R.block_mask(before[n], (4, 8), 0.5, norm)), n


def test_n_m_by_asp_matches_reference():
    before, m = pruned({"technique": "pruning", "granularity": "n_m", "n": 2, "m": 4})
    after = A.weights(m)
    for n in ENCODER:
        assert np.array_equal(after[n] != 0, R.nm_mask(before[n], 2, 4)), n
    assert R.sparsity_of(after["classifier"]) == 0


@pytest.mark.parametrize("remove", [True, False])
def test_neuron_pruning_by_paddleslim_filter_scores(remove):
    before, m = pruned({"technique": "pruning", "granularity": "neuron", "sparsity": 0.25, "norm": "l2",
                        "remove_pruned": remove})
    after = A.weights(m)
    for i in range(2):
        fin, fout = f"bert.encoder.layer.{i}.intermediate.dense", f"bert.encoder.layer.{i}.output.dense"
        keep = R.neuron_mask(before[fin], 0.25, "l2")
        if remove:
            assert after[fin].shape == (48, 32) and after[fout].shape == (32, 48)
            assert np.array_equal(after[fin], before[fin][keep]) and np.array_equal(after[fout], before[fout][:, keep])
        else:
            assert np.array_equal((after[fin] != 0).all(1), keep)
    assert not any(l._buffers for l in m.sublayers())  # PruningPlan's backups are gone
    # removing zeroed neurons or zeroing them gives the same function
    if not remove:
        _, m2 = pruned({"technique": "pruning", "granularity": "neuron", "sparsity": 0.25, "norm": "l2"})
        assert np.abs(A.run(m, X) - A.run(m2, X)).max() < 1e-5


def test_head_pruning_removes_heads_like_the_reference():
    before, m = pruned({"technique": "pruning", "granularity": "head", "sparsity": 0.5, "norm": "l1"})
    _, masked = pruned({"technique": "pruning", "granularity": "head", "sparsity": 0.5, "norm": "l1",
                        "remove_pruned": False})
    after = A.weights(m)
    st = A.structure(m)
    for att in st.attention:
        keep_h = R.head_mask(*(before[n] for n in (att.query, att.key, att.value, att.output)), 4, 0.5, "l1")
        rows = np.repeat(keep_h, 8)
        assert att.num_heads == 2 and after[att.query].shape == (16, 32) and after[att.output].shape == (32, 16)
        assert np.array_equal(after[att.value], before[att.value][rows])
        assert np.array_equal(after[att.output], before[att.output][:, rows])
    assert np.abs(A.run(m, X) - A.run(masked, X)).max() < 1e-5


def test_gradual_polynomial_pruning_logs_the_schedule():
    ctx = StageContext()
    spec = {"technique": "pruning", "sparsity": 0.8, "schedule": {"kind": "polynomial", "end_step": 4, "power": 3},
            "training": {"steps": 4, "learning_rate": 1e-3}}
    _, m = pruned(spec, task_data(), ctx)
    pts = ctx.history["sparsity"]
    want = [R.polynomial_sparsity(s, 0.8, 0.0, 0, 4, 3) for s, _ in pts[:-1]]
    assert [round(v, 2) for _, v in pts[:-1]] == [round(w, 2) for w in want]
    assert abs(pts[-1][1] - 0.8) < 2e-3 and len(ctx.history["loss"]) == 4
    w = A.weights(m)
    assert abs(np.mean([R.sparsity_of(w[n]) for n in ENCODER]) - 0.8) < 2e-3


def test_gradual_head_pruning_zeroes_then_removes():
    ctx = StageContext()
    spec = {"technique": "pruning", "granularity": "head", "sparsity": 0.5,
            "schedule": {"kind": "polynomial", "end_step": 3, "power": 1},
            "training": {"steps": 4, "learning_rate": 1e-3}}
    _, m = pruned(spec, task_data(), ctx)
    pts = ctx.history["sparsity"]
    assert [v for _, v in pts] == [0.0, 0.25, 0.25, 0.5, 0.5]  # round(s * 4 heads) / 4 at steps 0..3, then final
    assert all(a.num_heads == 2 for a in A.structure(m).attention)


def test_global_neuron_and_head_scopes_rank_across_layers():
    before, m = pruned({"technique": "pruning", "granularity": "neuron", "sparsity": 0.5, "scope": "global"})
    fins = [f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2)]
    scores = np.concatenate([np.sqrt((before[n].astype(np.float64) ** 2).sum(1)) for n in fins])
    keep = np.ones(scores.size, bool)
    keep[np.argsort(scores, kind="stable")[:64]] = False
    after = A.weights(m)
    assert after[fins[0]].shape[0] + after[fins[1]].shape[0] == 64
    assert after[fins[0]].shape[0] == keep[:64].sum()
    before, m = pruned({"technique": "pruning", "granularity": "head", "sparsity": 0.5, "scope": "global",
                        "remove_pruned": False})
    st = A.structure(m)
    scores = np.concatenate([R.head_scores(*(before[n] for n in (a.query, a.key, a.value, a.output)), 4)
                             for a in st.attention])
    keep = np.ones(8, bool)
    keep[np.argsort(scores, kind="stable")[:4]] = False
    got = np.concatenate([(A.weights(m)[a.query].reshape(4, -1) != 0).any(1) for a in st.attention])
    assert np.array_equal(got, keep)


def test_paddleslim_filter_pruners_cannot_trace_paddle3_models_and_the_scorers_work_without_tracing():
    slim = paddleslim()
    m = A.build_model("tiny-bert")
    for cls in (slim.dygraph.L1NormFilterPruner, slim.dygraph.L2NormFilterPruner, slim.dygraph.FPGMFilterPruner):
        try:
            with pytest.raises(AttributeError, match="_to_static_mode_guard_"):
                cls(m, [1, 8])  # builds its pruning groups with dygraph2program, broken on Paddle 3
            assert not paddle.in_dynamic_mode()  # ... and the failure leaves Paddle in static mode
        finally:
            paddle.disable_static()
    from unicompress_paddle.compat import ScoringCollection, filter_scorer, fixed_fpgm_pruner_class
    w = A.weights(m)["bert.encoder.layer.0.intermediate.dense"]
    for norm in ("l1", "l2"):
        keep = filter_scorer(norm).cal_mask(0.25, ScoringCollection("w", w)).astype(bool)
        assert np.array_equal(keep, R.neuron_mask(w, 0.25, norm))
    fpgm = slim.dygraph.FPGMFilterPruner.__new__(slim.dygraph.FPGMFilterPruner)
    with pytest.raises(AttributeError, match="product"):
        fpgm.cal_mask(0.25, ScoringCollection("w", w))  # np.product is gone in NumPy 2
    fixed = fixed_fpgm_pruner_class().__new__(fixed_fpgm_pruner_class())
    keep = fixed.cal_mask(0.25, ScoringCollection("w", w))
    dist = np.sqrt(((w[:, None, :] - w[None, :, :]) ** 2).sum(-1)).sum(1)  # FPGM: distance to all others
    assert keep.sum() == 48 and set(np.argsort(dist)[:16]) == set(np.flatnonzero(keep == 0))


def test_gradual_pruning_with_paddleslim_gmp_schedule():
    """power 3 and frequency > 10: PaddleSlim's GMPUnstructuredPruner runs the ramp itself."""
    from unicompress_paddle.pruning import uses_gmp
    spec = {"technique": "pruning", "sparsity": 0.6,
            "schedule": {"kind": "polynomial", "begin_step": 0, "end_step": 33, "frequency": 11, "power": 3},
            "training": {"steps": 36, "learning_rate": 1e-3}}
    assert uses_gmp(PruningSpec.model_validate(spec))
    ctx = StageContext()
    _, m = pruned(spec, task_data(2), ctx)
    pts = ctx.history["sparsity"]
    assert [s for s, _ in pts] == [0, 11, 22, 33, 36]
    for step, value in pts[:-1]:
        assert abs(value - R.polynomial_sparsity(step, 0.6, 0.0, 0, 33, 3)) < 2e-3, (step, value)
    w = A.weights(m)
    assert abs(np.mean([R.sparsity_of(w[n]) for n in ENCODER]) - 0.6) < 2e-3
