"""Low rank planned once in the core: per selected layer its rank (the reference's rule on the neutral weight) and
whether factorising saves parameters; factors of an earlier stage left alone; NaN/inf refused before any SVD;
layer kinds a backend cannot factorise refused or (allow_partial) listed. Run on a numpy MLP backend whose low-rank
handler executes nothing but `ctx.plan`."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pytest

import unicompress as uc
from unicompress.backend import Adapter, Capabilities, LayerInfo, LayerStats, Support, build_table, register, \
    unregister
from unicompress.backend.adapter import StageContext
from unicompress.backend.types import count_nonzero
from unicompress.errors import LayerSelectionError, NonFiniteWeightsError
from unicompress.planner import low_rank_factors, plan_stage
from unicompress.reference import lowrank as ref
from unicompress.specs import LayerRole, LowRankSpec

SHAPES = {"fc1": (16, 8), "fc2": (8, 16), "sq": (8, 8), "head": (3, 8)}


def _weights(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {n: rng.normal(0, 0.5, size=s).astype(np.float32) for n, s in SHAPES.items()}


@dataclass
class MLP:
    """x -> fc1 -> relu -> fc2 -> sq -> head; a layer may be a low-rank pair ``<name>.0`` [r, in], ``<name>.1``."""

    weights: dict = field(default_factory=_weights)


class MLPAdapter(Adapter):
    """A numpy backend: layers are whatever the weights dict holds; low rank executes `ctx.plan` only."""

    name = "numpy-mlp"
    framework_modules = ("test_core_lowrank_plan",)

    def __init__(self, kinds: dict | None = None):
        self.kinds = kinds or {}
        self.factorised: list[str] = []  # what the handler was asked to do, in order

    def capabilities(self) -> Capabilities:
        return Capabilities(self.name, build_table([("low_rank", "by", ["rank", "energy"], Support.native)]))

    def weight_kinds_for(self, spec):
        return frozenset({"linear"})

    def copy(self, model):
        return copy.deepcopy(model)

    def structure(self, model):
        return None

    def layers(self, model):
        return [LayerInfo(n, self.kinds.get(n, "linear"), LayerRole.classifier if n == "head" else LayerRole.other,
                          w.shape) for n, w in model.weights.items()]

    def weights(self, model, names=None):
        return {n: w.copy() for n, w in model.weights.items() if names is None or n in names}

    def set_weights(self, model, weights):
        model.weights.update({n: np.asarray(w, np.float32) for n, w in weights.items()})

    def run(self, model, inputs):
        x = np.asarray(inputs, np.float32)
        for i, base in enumerate(("fc1", "fc2", "sq", "head")):
            x = x @ self._dense(model, base).T
            x = np.maximum(x, 0) if i == 0 else x
        return x

    @staticmethod
    def _dense(model, base):
        w = model.weights
        return w[base] if base in w else w[f"{base}.1"] @ w[f"{base}.0"]

    def describe(self, model):
        return [LayerStats(n, "linear", w.shape, w.size, count_nonzero(w)) for n, w in model.weights.items()]

    def handlers(self):
        return {LowRankSpec: self._low_rank}

    def export_onnx(self, model, path, example, opset=17):
        raise NotImplementedError

    def _low_rank(self, model, spec, data, ctx):
        for name in ctx.plan.selected:
            first, second = ref.truncated_svd(model.weights.pop(name), ctx.plan.ranks[name])
            model.weights.update({f"{name}.0": first, f"{name}.1": second})
            self.factorised.append(name)
        return model


def _with_singular_values(s, shape=(16, 8), seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(shape[0], shape[0])))
    v, _ = np.linalg.qr(rng.normal(size=(shape[1], shape[1])))
    return (u[:, :len(s)] * np.asarray(s)) @ v[:, :len(s)].T


def test_rank_is_clamped_and_layers_that_save_nothing_are_skipped_with_why():
    plan = plan_stage(MLPAdapter(), MLP(), LowRankSpec(rank=5))
    # fc1/fc2: 5 * (16 + 8) = 120 < 128 saves; sq: 5 * (8 + 8) = 80 >= 64 does not; head: not selected (classifier)
    assert plan.selected == ("fc1", "fc2") and dict(plan.ranks) == {"fc1": 5, "fc2": 5}
    assert plan.skipped == (("sq", "rank 5 of 8x8 saves no parameters (80 >= 64 weights); "
                                   "force: true factorises anyway"),)
    forced = plan_stage(MLPAdapter(), MLP(), LowRankSpec(rank=12, force=True))
    assert dict(forced.ranks) == {"fc1": 8, "fc2": 8, "sq": 8} and forced.skipped == ()  # min(shape) = 8


def test_energy_rank_is_the_reference_rule_on_the_neutral_weight():
    model = MLP()
    model.weights["fc1"] = _with_singular_values([3, 2, 1]).astype(np.float32)  # s^2 = 9, 4, 1 of 14
    plan = plan_stage(MLPAdapter(), model, LowRankSpec(energy=0.9, force=True))
    assert plan.ranks["fc1"] == 2  # 9/14 = 0.64 < 0.9 <= 13/14 = 0.93
    for name, w in MLPAdapter().weights(model, ["fc2", "sq"]).items():
        assert plan.ranks[name] == ref.rank_for_energy(np.linalg.svd(w.astype(np.float64), compute_uv=False), 0.9)


def test_reference_rank_for():
    assert ref.rank_for(np.eye(8), rank=12) == 8 and ref.rank_for(np.eye(8), rank=3) == 3
    assert ref.rank_for(np.diag([3.0, 2.0, 1.0]), energy=0.9) == 2
    assert ref.rank_for(np.zeros((4, 6)), energy=0.5) == 1  # all-zero: no energy to keep, the smallest rank
    with pytest.raises(ValueError, match="exactly one"):
        ref.rank_for(np.eye(2), rank=1, energy=0.5)


def test_factors_of_an_earlier_stage_are_left_alone_and_the_empty_plan_says_so():
    adapter = MLPAdapter()
    once = adapter.apply(MLP(), LowRankSpec(rank=2), None, StageContext())
    assert adapter.factorised == ["fc1", "fc2", "sq"]
    assert low_rank_factors(adapter.layers(once)) == {f"{n}.{i}": n for n in ("fc1", "fc2", "sq") for i in (0, 1)}
    again = plan_stage(adapter, once, LowRankSpec(rank=1, force=True))
    assert again.selected == () and {n for n, _ in again.skipped} == {f"{n}.{i}" for n in ("fc1", "fc2", "sq")
                                                                      for i in (0, 1)}
    assert "from an earlier low-rank stage" in again.skipped[0][1]
    assert "no selected layer is factorised" in again.notes[0]
    # a Sequential-style "seq.0" / "seq.2" is no factor pair (no "seq.1"), nor is "x.0" when "x" still exists
    names = [LayerInfo(n, "linear", LayerRole.other, s) for n, s in
             [("seq.0", (16, 8)), ("seq.2", (8, 16)), ("x", (8, 8)), ("x.0", (2, 8)), ("x.1", (8, 2))]]
    assert low_rank_factors(names) == {}


@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_non_finite_weights_are_refused_before_the_handler_and_any_svd(value):
    adapter = MLPAdapter()
    model = MLP()
    model.weights["fc2"][3, 4] = value
    for spec in (LowRankSpec(rank=2), LowRankSpec(energy=0.9)):
        with pytest.raises(NonFiniteWeightsError, match=r"stages\[0\].*fc2 \((1 NaN, 0|0 NaN, 1) inf of 128\)"):
            adapter.apply(model, spec, None, StageContext())
    assert adapter.factorised == [] and "fc2.0" not in model.weights
    only_fc1 = LowRankSpec(rank=2, selector={"include": ["fc1"]})  # the poisoned layer is not selected: planned
    assert plan_stage(adapter, model, only_fc1).selected == ("fc1",)


def test_kinds_the_backend_cannot_factorise_are_refused_or_listed():
    adapter = MLPAdapter(kinds={"sq": "einsum_dense"})
    with pytest.raises(LayerSelectionError, match="(?s)sq: layer kind 'einsum_dense'.*allow_partial"):
        plan_stage(adapter, MLP(), LowRankSpec(rank=2))
    plan = plan_stage(adapter, MLP(), LowRankSpec(rank=2, selector={"allow_partial": True}))
    assert plan.selected == ("fc1", "fc2") and "sq" not in plan.ranks
    assert plan.skipped[0][0] == "sq" and "einsum_dense" in plan.skipped[0][1]


@pytest.fixture
def mlp_backend():
    register("numpy-mlp", MLPAdapter, replace=True)
    yield "numpy-mlp"
    unregister("numpy-mlp")


def test_compress_executes_the_plan_and_reports_ranks_and_skips(mlp_backend):
    model = MLP()
    x = np.random.default_rng(2).normal(size=(4, 8)).astype(np.float32)
    result = uc.compress(model, LowRankSpec(rank=5), backend=mlp_backend, progress=False, export_example=x)
    stage = result.report.stages[0]
    assert stage.plan["selected"] == 2 and stage.plan["skipped"] == [
        ["sq", "rank 5 of 8x8 saves no parameters (80 >= 64 weights); force: true factorises anyway"]]
    assert {c["name"]: c["passed"] for c in stage.checks} == {"output shape": True, "factorised layers": True}
    after = result.model.weights
    assert after["fc1.0"].shape == (5, 8) and after["fc1.1"].shape == (16, 5) and "sq" in after
    err = np.linalg.norm(after["fc1.1"].astype(np.float64) @ after["fc1.0"] - model.weights["fc1"])
    assert err == pytest.approx(ref.optimal_error(model.weights["fc1"], 5), rel=1e-5)
    assert result.report.before.params - result.report.after.params == 2 * (128 - 120)
    assert stage.plan["ranks"] == {"fc1": 5, "fc2": 5}
    text = result.report.to_markdown()
    assert "ranks: 5: 2 layer(s)" in text and "left alone: `sq`: rank 5 of 8x8" in text
