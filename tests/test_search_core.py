"""The search's framework-free parts: plans as recipes, the spec, the Pareto front, greedy and Optuna on a
synthetic evaluator, sensitivity (and its cache) on the numpy test backend."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from numpy_adapter import NumpyAdapter, NumpyMLP  # noqa: E402

from unicompress.backend import TaskData, register, unregister  # noqa: E402
from unicompress.errors import SpecValidationError  # noqa: E402
from unicompress.planner import layer_settings  # noqa: E402
from unicompress.recipe_io import load_recipe, save_recipe  # noqa: E402
from unicompress.search import (Budget, Evaluator, GreedyStrategy, OptunaStrategy, Trial, compute_sensitivity,  # noqa
                                dominates, load_search, pareto_front, plan_recipe)
from unicompress.search.sensitivity import SensitivityRow  # noqa: E402
from unicompress.specs import PruningSpec, QuantizationSpec, Recipe  # noqa: E402
from unicompress.specs.search import SearchSpec  # noqa: E402

CANDS = [{"technique": "quantization", "mode": "weight_only", "bits": 8},
         {"technique": "quantization", "mode": "weight_only", "bits": 4},
         {"technique": "pruning", "sparsity": 0.5}]


def _spec(**kw):
    return SearchSpec.model_validate({"candidates": CANDS, **kw})


def test_plan_becomes_one_ordinary_recipe_with_mixed_precision_overrides(tmp_path):
    spec = _spec()
    base = Recipe(name="b", stages=[QuantizationSpec()])
    plan = {"l0.q": (0,), "l0.k": (1, 2), "odd[1]*": (2,)}
    recipe = plan_recipe(base, plan, spec, name="b-searched")
    assert [s.technique for s in recipe.stages] == ["pruning", "quantization"]
    prune, quant = recipe.stages
    # exact names, glob characters escaped: the selector chooses these layers and nothing else
    assert prune.selector.matches("odd[1]*", "other") and not prune.selector.matches("odd1x", "other")
    assert prune.selector.matches("l0.k", "key") and not prune.selector.matches("l0.q", "query")
    assert sorted(quant.selector.include) == ["l0.k", "l0.q"]
    assert {n: layer_settings(quant, n)["bits"] for n in ("l0.q", "l0.k")} == {"l0.q": 8, "l0.k": 4}
    loaded = load_recipe(save_recipe(recipe, tmp_path / "r.yaml"))
    assert loaded == recipe


def test_search_spec_refuses_what_one_recipe_cannot_hold():
    with pytest.raises(ValueError, match="differ only in"):
        _spec(candidates=[{"technique": "quantization", "mode": "weight_only"},
                          {"technique": "quantization", "mode": "dynamic"}])
    with pytest.raises(ValueError, match="selector"):
        _spec(candidates=[{"technique": "pruning", "sparsity": 0.5, "selector": {"include": ["a"]}}])
    with pytest.raises(ValueError, match="repeat"):
        _spec(candidates=[CANDS[2], CANDS[2]])


def test_load_search_names_fields_from_the_file_root(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nbackend: torch\nsearch: {tolerance: -1}\n")
    with pytest.raises(SpecValidationError) as exc:
        load_search(f)
    assert exc.value.problems[0].path.startswith("search.tolerance")
    f.write_text("name: s\nstages: [{technique: pruning, sparsity: 0.5}]\nsearch: {}\n")
    with pytest.raises(SpecValidationError, match="no stages"):
        load_search(f)
    f.write_text("name: s\nbackend: torch\nsearch: {trials: 3}\n")
    base, spec = load_search(f)
    assert base.name == "s" and spec.trials == 3 and len(spec.candidates) == 3


def _t(n, drop, obj, plan=None):
    return Trial(n, plan or {f"l{n}": (0,)}, 1 - drop, drop, obj)


def test_pareto_front_is_non_dominated_and_dominates_the_rest():
    trials = [_t(0, 0.0, 100, {}), _t(1, 0.01, 80), _t(2, 0.02, 90), _t(3, 0.05, 50), _t(4, 0.05, 60),
              _t(5, 0.2, 40), Trial(6, {"x": (1,)}, math.nan, math.nan, math.nan, error="refused")]
    front = pareto_front(trials)
    assert [t.number for t in front] == [5, 3, 1, 0]
    assert not any(dominates(a, b) for a in front for b in front)
    assert all(any(dominates(f, t) for f in front) for t in trials[:6] if t not in front)


def _synthetic(costs, damage):
    """A deterministic evaluator: each (layer, candidate) saves costs[c] bytes and loses damage[layer][c]."""
    seen = []

    def evaluate(plan):
        drop = sum(damage[n][i] for n, idx in plan.items() for i in idx)
        obj = 1000 - sum(costs[i] for idx in plan.values() for i in idx)
        t = Trial(len(seen), dict(plan), 1 - drop, drop, obj)
        seen.append(t)
        return t
    return evaluate, seen


def test_greedy_keeps_the_drop_within_tolerance_and_orders_by_saving_per_drop():
    spec = _spec()
    costs = [30, 40, 10]
    damage = {"a": [0.0, 0.004, 0.0], "b": [0.001, 0.02, 0.0], "c": [0.003, 0.006, 0.0]}
    rows = [SensitivityRow(n, i, "", 1 - d, d, 1000 - costs[i], costs[i], 0.0)
            for n, ds in damage.items() for i, d in enumerate(ds)]
    evaluate, seen = _synthetic(costs, damage)
    greedy = GreedyStrategy(rows, spec.candidates, tolerance=0.01)
    trials = greedy.run(evaluate, Budget(trials=50))
    kept = [t for t in trials if t.kept]
    assert all(t.drop <= 0.01 for t in kept) and any(t.kept is False for t in trials)
    best = min(kept, key=lambda t: t.objective)
    # every zero-drop move comes first; b's int4 (drop 0.02) alone exceeds the tolerance and is never tried
    assert all(t.plan.get("b") != (1,) and 1 not in t.plan.get("b", ()) for t in trials)
    # order: a int8, the three prunes (no drop), b int8, a int4 (over int8), c int8; c int4 then makes 0.011: refused
    assert best.plan == {"a": (1, 2), "b": (0, 2), "c": (0, 2)} and best.objective == 1000 - 50 - 40 - 40
    assert abs(best.drop - 0.008) < 1e-12
    assert [t.plan.get("c") for t in trials if t.kept is False] == [(1, 2)]
    assert Budget(trials=2).left(2) is False and len(greedy.run(_synthetic(costs, damage)[0], Budget(2))) == 2


def test_optuna_multi_objective_resumes_from_its_study_file(tmp_path):
    pytest.importorskip("optuna")
    spec = _spec()
    damage = {"a": [0.0, 0.004, 0.001], "b": [0.001, 0.02, 0.0]}
    evaluate, seen = _synthetic([30, 40, 10], damage)
    strat = OptunaStrategy(["a", "b"], spec.candidates, "nsga2", seed=0, storage=tmp_path / "study.db")
    first = strat.run(evaluate, Budget(trials=5))
    assert len(first) == 5 and len(seen) == 5
    again = OptunaStrategy(["a", "b"], spec.candidates, "nsga2", seed=0, storage=tmp_path / "study.db")
    second = again.run(evaluate, Budget(trials=8))
    assert len(seen) == 8  # three new evaluations; the five stored trials are read back, not re-run
    stored = [t for t in second if t.strategy == "optuna (resumed)"]
    assert [(t.drop, t.objective) for t in stored] == [(t.drop, t.objective) for t in first]
    assert all(t.plan == f.plan for t, f in zip(stored, first))
    assert len(again.study.trials) == 8


def _numpy_data(adapter, model):
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(16, 4)).astype(np.float32) for _ in range(3)]
    batches = [({"x": x}, np.asarray(adapter.run(model, {"x": x})).argmax(-1)) for x in xs]
    return TaskData(evaluation=lambda: iter(batches[2:]), extra={"validation": lambda: iter(batches[:2])},
                    num_labels=3)


@pytest.fixture
def numpy_backend():
    register("numpy-test", NumpyAdapter, replace=True)
    yield
    unregister("numpy-test")


def test_sensitivity_on_the_numpy_backend_is_cached_by_weights_and_candidates(tmp_path, numpy_backend):
    adapter, model = NumpyAdapter(), NumpyMLP()
    data = _numpy_data(adapter, model)
    spec = SearchSpec(candidates=[PruningSpec(sparsity=0.5), PruningSpec(sparsity=0.9)], objective="nonzero")
    ev = Evaluator(adapter, model, Recipe(stages=[PruningSpec(sparsity=0.5)], backend=adapter.name), spec, data)
    assert ev.baseline_metric == 1.0 and ev.baseline_objective == 8 * 4 + 3 * 8
    cache = tmp_path / "sens.json"
    rows = compute_sensitivity(ev, cache=cache)
    assert [(r.layer, r.label) for r in rows] == [("ffn.in", "prune50%"), ("ffn.in", "prune90%"),
                                                   ("ffn.out", "prune50%"), ("ffn.out", "prune90%")]
    assert [r.saving for r in rows] == [16, 29, 12, 22]  # the zeros magnitude pruning made, per layer
    assert all(0 <= r.drop <= 1 for r in rows) and max(r.drop for r in rows) > 0
    stored = json.loads(cache.read_text())
    stored["rows"][0]["drop"] = 123.0  # a cache hit returns what is stored (proof it was read, not recomputed)
    cache.write_text(json.dumps(stored))
    assert compute_sensitivity(ev, cache=cache)[0].drop == 123.0
    model.weights["ffn.in"] = model.weights["ffn.in"] * 2  # other weights: another key, recomputed
    ev2 = Evaluator(adapter, model, ev.base, spec, data)
    assert compute_sensitivity(ev2, cache=cache)[0].drop != 123.0
