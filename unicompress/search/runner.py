"""`search()`: sensitivity, a strategy, the best plan within the tolerance as an ordinary recipe, the Pareto
front, the trials; the best plan is then run once more and evaluated on the test split."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..backend.types import TaskData
from ..fileio import atomic_write_text
from ..specs import Recipe
from ..specs.search import SearchSpec
from .evaluate import Batches, Evaluator, Trial
from .latency import format_objective, ratio_word
from .pareto import front_markdown, pareto_front, plot_front
from .plan import label, plan_recipe
from .sensitivity import (SensitivityRow, cache_key, compute_sensitivity, plot_sensitivity, searched_layers,
                          sensitivity_markdown)
from .strategies import Budget, GreedyStrategy, OptunaStrategy, SearchStrategy


@dataclass
class SearchResult:
    """What a search found and wrote."""

    best: Trial
    recipe: Optional[Recipe]  # None when no plan beat the uncompressed model within the tolerance
    trials: list[Trial]
    front: list[Trial]
    sensitivity: list[SensitivityRow]
    baseline_metric: float
    baseline_objective: float
    validation_source: str
    test_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # {"before": ..., "after": ...}
    reproduced_objective: Optional[float] = None  # the objective of the written recipe, compressed again
    files: dict[str, Path] = field(default_factory=dict)


def load_search(source: Union[str, Path, dict]) -> tuple[Recipe, SearchSpec]:
    """A search file: a recipe without ``stages:`` plus a ``search:`` section (see `unicompress.specs.search`).

    Returns the base recipe (model, data, backend, export; its stages are a placeholder the plan replaces)
    and the SearchSpec. Every problem is a SpecValidationError naming its field."""
    from ..errors import Problem, SpecValidationError
    from ..recipe_io import _read, parse_text, validate_data

    if isinstance(source, dict):
        data, where = dict(source), "<dict>"
    else:
        text, where = _read(source)
        data = parse_text(text, where)
    if not isinstance(data, dict):
        raise SpecValidationError([Problem("<root>", type(data).__name__, "a search file is a mapping")], where)
    if "stages" in data:
        raise SpecValidationError([Problem("stages", "given", "a search file has no stages: the search writes them "
                                           "from search.candidates")], where)
    if "search" not in data:
        raise SpecValidationError([Problem("search", "missing", "add a search: section (candidates, tolerance, "
                                           "objective, trials)")], where)
    raw = data.pop("search") or {}
    try:
        spec = validate_data(raw, SearchSpec, where)
    except SpecValidationError as exc:  # name the fields from the file's root
        raise SpecValidationError([Problem(f"search.{p.path}", p.value, p.allowed) for p in exc.problems],
                                  where) from None
    base = validate_data({**data, "stages": [spec.candidates[0].model_dump(mode="json")]}, Recipe, where)
    return base, spec


def make_strategy(spec: SearchSpec, evaluator: Evaluator, layers: list[str], rows: list[SensitivityRow],
                  out: Optional[Path], key: str, progress: bool) -> SearchStrategy:
    """The strategy the spec names (Optuna's study file is ``<out>/study.db`` when there is an out folder)."""
    if spec.strategy == "greedy":
        return GreedyStrategy(rows, spec.candidates, spec.tolerance, progress=progress)
    return OptunaStrategy(layers, spec.candidates, spec.sampler, spec.seed,
                          storage=out / "study.db" if out is not None else None,
                          study_name=f"search-{key[:16]}-{spec.sampler}-{spec.seed}", progress=progress)


def search(model: Any, base: Recipe, spec: SearchSpec, data: Optional[TaskData] = None, *,
           backend: Optional[str] = None, out: Union[str, Path, None] = None, validation: Optional[Batches] = None,
           progress: bool = True) -> SearchResult:
    """Search per-layer compression within `spec.tolerance` of the model's metric on validation, minimising
    `spec.objective`; write the best plan as ``<out>/searched.yaml`` (an ordinary recipe), the Pareto front
    (``pareto.md``, ``pareto.png``), the trials (``trials.json``) and the sensitivities (``sensitivity.*``).

    Example::

        base, spec = load_search("examples/search_tiny.yaml")
        result = search(model, base, spec, data, backend="torch", out="searchdir")
        print(result.best.objective, result.test_metrics)
    """
    from ..backend.registry import resolve_backend

    adapter = resolve_backend(backend or base.backend, model)
    out = Path(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator(adapter, model, base, spec, data, validation)
    layers = searched_layers(evaluator)
    rows = compute_sensitivity(evaluator, layers, cache=out / "sensitivity.json" if out else None, progress=progress)
    key = cache_key(evaluator, layers)
    baseline = evaluator({}, "baseline")
    strategy = make_strategy(spec, evaluator, layers, rows, out, key, progress)
    found = strategy.run(evaluator, Budget(spec.trials, spec.time_budget_s))
    trials = [baseline, *found]
    for i, t in enumerate(trials):
        t.number = i
    within = [t for t in trials if not t.error and math.isfinite(t.drop) and t.drop <= spec.tolerance + 1e-12]
    best = min(within, key=lambda t: (t.objective, t.drop, t.number))
    front = pareto_front(trials)
    result = SearchResult(best, None, trials, front, rows, evaluator.baseline_metric, evaluator.baseline_objective,
                          evaluator.validation_source)
    if best.plan:
        result.recipe = plan_recipe(base, best.plan, spec, name=f"{base.name}-searched")
        _final_run(evaluator, result)
    if out is not None:
        result.files = _write(out, result, spec)
    return result


def _final_run(evaluator: Evaluator, result: SearchResult) -> None:
    """Compress once more with the written recipe (export left out) and evaluate it on the test split."""
    from ..api import compress

    recipe = result.recipe.model_copy(update={"export": None,
                                              "evaluate": evaluator.data is not None
                                              and evaluator.data.evaluation is not None})
    final = compress(evaluator.model, recipe, evaluator.data, backend=evaluator.adapter.name, progress=False)
    result.reproduced_objective = evaluator.objective_of_result(final)
    if final.report.metrics_after:
        result.test_metrics = {"before": final.report.metrics_before, "after": final.report.metrics_after}


def _write(out: Path, result: SearchResult, spec: SearchSpec) -> dict[str, Path]:
    from ..recipe_io import save_recipe

    labels = [label(c) for c in spec.candidates]
    files = {"trials": atomic_write_text(out / "trials.json", json.dumps(
        {"baseline_metric": result.baseline_metric, "baseline_objective": result.baseline_objective,
         "objective": spec.objective, "metric": spec.metric, "tolerance": spec.tolerance, "candidates": labels,
         "best": result.best.number, "trials": [t.to_dict() for t in result.trials]}, indent=1, default=str))}
    files["sensitivity"] = out / "sensitivity.json"
    files["sensitivity_table"] = atomic_write_text(out / "sensitivity.md",
                                                   sensitivity_markdown(result.sensitivity, spec.objective))
    files["pareto_table"] = atomic_write_text(out / "pareto.md", front_markdown(
        result.front, spec.objective, result.baseline_objective, labels))
    for name, png in (("sensitivity_plot", plot_sensitivity(result.sensitivity, out / "sensitivity.png")),
                      ("pareto_plot", plot_front(result.trials, result.front, out / "pareto.png", spec.objective,
                                                 spec.tolerance))):
        if png is not None:
            files[name] = png
    if result.recipe is not None:
        files["recipe"] = save_recipe(result.recipe, out / "searched.yaml")
    files["summary"] = atomic_write_text(out / "search.md", summary_markdown(result, spec))
    return files


def summary_markdown(result: SearchResult, spec: SearchSpec) -> str:
    """The search in a few lines: baseline, best plan, its size ratio, validation drop and test metrics."""
    b, labels = result.best, [label(c) for c in spec.candidates]
    lines = [f"# Search: {spec.strategy}, objective {spec.objective}, tolerance {spec.tolerance:g} on {spec.metric}",
             "", f"- validation: {result.validation_source}",
             f"- baseline: {spec.metric} {result.baseline_metric:.4f}, {spec.objective} "
             f"{format_objective(result.baseline_objective, spec.objective)}",
             f"- trials: {len(result.trials)} (sensitivity runs: {len(result.sensitivity)})"]
    if result.recipe is None:
        lines.append("- no plan stayed within the tolerance: the uncompressed model is the result")
    else:
        lines += [f"- best: trial {b.number}, {spec.objective} {format_objective(b.objective, spec.objective)} "
                  f"({result.baseline_objective / b.objective:.2f}x {ratio_word(spec.objective)}), drop "
                  f"{b.drop:+.4f} on validation",
                  f"- recipe: `searched.yaml`, {len(b.plan)} layer(s): "
                  + ", ".join(f"`{n}` {'+'.join(labels[i] for i in idx)}" for n, idx in b.plan.items()),
                  f"- recompressed from the recipe: {spec.objective} "
                  f"{format_objective(result.reproduced_objective, spec.objective)}"
                  + (" (timed again: latency varies from run to run)" if spec.objective == "latency" else "")]
        if result.test_metrics:
            lines.append(f"- test split: before {result.test_metrics['before']}, after {result.test_metrics['after']}")
    return "\n".join(lines) + "\n\n## Pareto front\n\n" + front_markdown(result.front, spec.objective,
                                                                            result.baseline_objective, labels)
