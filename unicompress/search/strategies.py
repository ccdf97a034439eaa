"""Search strategies behind one interface: `run(evaluate, budget)` returns the trials it made.

- `GreedyStrategy`: from the uncompressed model, add per-layer choices in order of objective saved per unit of
  sensitivity (metric drop when only that layer is compressed), evaluating each combined plan on validation and
  keeping it while the drop stays within the tolerance.
- `OptunaStrategy`: Optuna's multi-objective samplers (NSGA-II or TPE) over every layer's choice, minimising
  (metric drop, objective); resumable from its SQLite study file.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

from .evaluate import Trial
from .plan import Plan, with_choice
from .sensitivity import SensitivityRow, progress_bar

Evaluate = Callable[[Plan], Trial]


@dataclass
class Budget:
    """At most `trials` evaluations and (when set) no new trial after `seconds` of wall time."""

    trials: int
    seconds: Optional[float] = None

    def __post_init__(self) -> None:
        self._start = time.monotonic()

    def left(self, used: int) -> bool:
        """Whether another trial may start after `used` trials."""
        timed_out = self.seconds is not None and time.monotonic() - self._start >= self.seconds
        return used < self.trials and not timed_out


class SearchStrategy(Protocol):
    """What `unicompress.search.search` drives: one call, a budget, the trials back (in order)."""

    name: str

    def run(self, evaluate: Evaluate, budget: Budget) -> list[Trial]:
        ...


class GreedyStrategy:
    """Greedy from sensitivity (see the module docstring).

    Moves are (layer, candidate) pairs whose single-layer run saved objective; a move whose single-layer drop
    already exceeds the tolerance is not tried; a move that would not lower the current plan's objective (int8
    after int4 on the same layer) is not tried. Each tried move costs one trial."""

    name = "greedy"

    def __init__(self, sensitivity: Sequence[SensitivityRow], candidates: Sequence[Any], tolerance: float,
                 progress: bool = False):
        self.rows = [r for r in sensitivity if r.usable]
        self.candidates, self.tolerance, self.progress = list(candidates), tolerance, progress

    def order(self) -> list[SensitivityRow]:
        """Moves, best first: objective saved per unit of drop (drops at or below zero count as a tiny drop)."""
        eps = 1e-6
        moves = [r for r in self.rows if r.saving > 0 and r.drop <= self.tolerance]
        return sorted(moves, key=lambda r: (-r.saving / max(r.drop, eps), -r.saving, r.layer, r.candidate))

    def run(self, evaluate: Evaluate, budget: Budget) -> list[Trial]:
        saving = {(r.layer, r.candidate): r.saving for r in self.rows}
        moves = self.order()
        trials: list[Trial] = []
        current: Plan = {}
        current_objective = math.inf
        bar = progress_bar(self.progress, min(budget.trials, len(moves)), "greedy search")
        for move in moves:
            if not budget.left(len(trials)):
                break
            new = with_choice(current, move.layer, move.candidate, self.candidates)
            estimate = sum(saving.get((n, i), 0.0) for n, idx in new.items() for i in idx) - \
                sum(saving.get((n, i), 0.0) for n, idx in current.items() for i in idx)
            if new == current or estimate <= 0:
                continue
            trial = evaluate(new)
            trial.strategy = self.name
            trial.kept = (not trial.error and trial.drop <= self.tolerance + 1e-12
                          and trial.objective < current_objective)
            if trial.kept:
                current, current_objective = new, trial.objective
            trials.append(trial)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(objective=f"{current_objective:,.0f}", drop=f"{trial.drop:+.4f}")
        if bar is not None:
            bar.close()
        return trials


class OptunaStrategy:
    """Multi-objective search with Optuna (imported here only): per layer a categorical choice among nothing,
    each candidate, and each pruning + quantization pair; objectives (metric drop, objective), both minimised.

    With `storage` (a path), the study lives in that SQLite file under `study_name` and a second run continues
    it: trials already complete count against `budget.trials`."""

    name = "optuna"

    def __init__(self, layers: Sequence[str], candidates: Sequence[Any], sampler: str = "nsga2", seed: int = 0,
                 storage: Optional[Path] = None, study_name: str = "unicompress-search", progress: bool = False):
        self.layers, self.candidates = list(layers), list(candidates)
        self.sampler, self.seed, self.storage, self.study_name = sampler, seed, storage, study_name
        self.progress = progress
        self.study: Any = None

    def choices(self) -> list[tuple[int, ...]]:
        """Per-layer options: (), (i,) for each candidate, (p, q) for each pruning and quantization pair."""
        prune = [i for i, c in enumerate(self.candidates) if c.technique == "pruning"]
        quant = [i for i, c in enumerate(self.candidates) if c.technique == "quantization"]
        return [(), *[(i,) for i in range(len(self.candidates))], *[(p, q) for p in prune for q in quant]]

    def run(self, evaluate: Evaluate, budget: Budget) -> list[Trial]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = (optuna.samplers.NSGAIISampler(seed=self.seed) if self.sampler == "nsga2"
                   else optuna.samplers.TPESampler(seed=self.seed, multivariate=True))
        storage = f"sqlite:///{Path(self.storage).resolve()}" if self.storage is not None else None
        self.study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler, storage=storage,
                                         study_name=self.study_name, load_if_exists=storage is not None)
        options = self.choices()
        names = [",".join(map(str, o)) or "none" for o in options]
        done = [t for t in self.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        # earlier runs of a resumed study: their plans and values are in the study file, not evaluated again
        trials: list[Trial] = [self._stored(t, options, names) for t in done]

        def objective(ot: Any) -> tuple[float, float]:
            plan = {layer: options[names.index(ot.suggest_categorical(layer, names))] for layer in self.layers}
            trial = evaluate({k: v for k, v in plan.items() if v})
            trial.strategy, trial.extra["optuna_number"] = self.name, ot.number
            ot.set_user_attr("metric", trial.metric)
            trials.append(trial)
            if trial.error:
                raise optuna.TrialPruned(trial.error)  # refused plans do not steer the sampler
            return trial.drop, trial.objective

        remaining = max(0, budget.trials - len(done))
        if remaining:
            self.study.optimize(objective, n_trials=remaining, timeout=budget.seconds,
                                show_progress_bar=self.progress, catch=())
        return trials

    def _stored(self, ot: Any, options: list, names: list) -> Trial:
        plan = {k: options[names.index(v)] for k, v in ot.params.items() if options[names.index(v)]}
        drop, objective = ot.values
        return Trial(-1, plan, float(ot.user_attrs.get("metric", float("nan"))), drop, objective,
                     strategy=f"{self.name} (resumed)", extra={"optuna_number": ot.number})
