"""Evaluate one plan: compress a copy of the model with the plan's recipe (planner and judge run), then
measure the metric on the validation split and the objective from the compressed model's `describe()`."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from ..backend.types import TaskData
from ..report import totals_of
from ..specs import Recipe
from ..specs.search import SearchSpec
from .plan import Plan, canonical, plan_recipe

Batches = Callable[[], Iterable[tuple[Any, Any]]]


@dataclass
class Trial:
    """One evaluated plan: metric on validation, its drop from the baseline, the objective's value."""

    number: int
    plan: Plan
    metric: float
    drop: float
    objective: float
    seconds: float = 0.0
    strategy: str = ""
    kept: Optional[bool] = None  # greedy: whether the plan became the current one
    error: str = ""  # why the plan could not be compressed (then metric/objective are NaN)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["plan"] = {k: list(v) for k, v in self.plan.items()}
        return d


def validation_split(data: Optional[TaskData], validation: Optional[Batches] = None) -> tuple[Batches, str]:
    """The batches candidates are judged on, and where they came from.

    An explicit `validation`; else ``data.extra["validation"]`` (recipe data with a validation split);
    else ``data.evaluation`` (then validation and test are the same rows, which the report says)."""
    if validation is not None:
        return validation, "given"
    if data is not None and callable(data.extra.get("validation")):
        return data.extra["validation"], "data.extra['validation']"
    if data is not None and data.evaluation is not None:
        return data.evaluation, "data.evaluation (no separate validation split: it is also the test split)"
    raise ValueError("the search needs labelled validation batches: TaskData.evaluation or "
                     "TaskData.extra['validation'], or pass validation=")


def objective_of(stats: Sequence[Any], objective: str) -> float:
    """The objective's value over `describe()` rows: bytes at their bit widths, non-zeros or parameters."""
    t = totals_of(stats)
    return float({"bytes": t.nbytes, "nonzero": t.nonzero, "params": t.params}[objective])


class Evaluator:
    """Runs plans on one model (never modified) through `unicompress.compress` and scores them."""

    def __init__(self, adapter: Any, model: Any, base: Recipe, spec: SearchSpec, data: Optional[TaskData],
                 validation: Optional[Batches] = None):
        self.adapter, self.model, self.base, self.spec, self.data = adapter, model, base, spec, data
        self.validation, self.validation_source = validation_split(data, validation)
        self.baseline_metric = self.metric_of(model)
        self.latency = None
        if spec.objective == "latency":
            from .latency import LatencyProbe

            first = next(iter(self.validation()))
            self.latency = LatencyProbe(adapter, model, spec, first[0] if isinstance(first, tuple) else first)
            self.baseline_objective = 1.0  # latencies are relative to the uncompressed model's
        else:
            self.baseline_objective = objective_of(adapter.describe(model), spec.objective)
        self.trials: list[Trial] = []

    def metric_of(self, model: Any, batches: Optional[Batches] = None) -> float:
        """The search metric of `model` on `batches` (default: the validation split)."""
        source = batches or self.validation
        if self.data is not None and self.data.task != "classification":  # e.g. perplexity for causal-lm
            from ..tasks import evaluate_task

            values = evaluate_task(self.adapter, model, replace(self.data, evaluation=source))
        else:
            values = self.adapter.evaluate(model, source())
        if self.spec.metric not in values:
            raise KeyError(f"metric {self.spec.metric!r} is not among the backend's metrics {sorted(values)}")
        return float(values[self.spec.metric])

    def drop(self, metric: float) -> float:
        """How much worse than the baseline (positive = worse)."""
        return metric - self.baseline_metric if self.spec.lower_is_better else self.baseline_metric - metric

    def compress(self, plan: Mapping[str, Sequence[int]]) -> Any:
        """The CompressionResult of the plan's recipe on a copy of the model (no export, no evaluation)."""
        from ..api import compress

        recipe = plan_recipe(self.base, plan, self.spec, evaluate=False, export=False)
        return compress(self.model, recipe, self.data, backend=self.adapter.name, progress=False)

    def score(self, plan: Mapping[str, Sequence[int]]) -> tuple[float, float, str]:
        """(metric on validation, objective, error) of a plan; the empty plan is the uncompressed model.
        A plan the planner or the backend refuses scores NaN with the reason, rather than ending the search."""
        from ..errors import UnicompressError

        plan = canonical(plan)
        if not plan:
            return self.baseline_metric, self.baseline_objective, ""
        try:
            result = self.compress(plan)
        except UnicompressError as exc:
            return float("nan"), float("nan"), f"{type(exc).__name__}: {exc}"
        try:
            objective = self.objective_of_result(result)
        except UnicompressError as exc:
            return float("nan"), float("nan"), f"{type(exc).__name__}: {exc}"
        return self.metric_of(result.model), objective, ""

    def objective_of_result(self, result: Any) -> float:
        """The objective of a CompressionResult: from its report's describe() rows, or timed (latency)."""
        if self.latency is not None:
            return self.latency.relative(result.model)
        return objective_of(result.report.layers_after, self.spec.objective)

    def __call__(self, plan: Mapping[str, Sequence[int]], strategy: str = "") -> Trial:
        """Evaluate a plan and record it as a trial."""
        plan = canonical(plan)
        t0 = time.perf_counter()
        metric, objective, error = self.score(plan)
        trial = Trial(len(self.trials), plan, metric, self.drop(metric), objective, time.perf_counter() - t0,
                      strategy, error=error)
        self.trials.append(trial)
        return trial
