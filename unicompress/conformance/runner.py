"""Run a case on one backend once, keep what the checks need, and cache the check results.

A case runs the way the core runs a stage — on `adapter.copy(model)`, through `adapter.apply` — so the
same path serves claimed runs and probes of rows the backend does not claim (the core's `compress`
would refuse those; the contract tests exercise `compress` itself).

Example::

    runner = CaseRunner(get_backend("torch"))
    runner.results(CASES_BY_ID["pruning/nm-2-4"])   # {"sparsity": CheckResult(passed=True, ...), ...}
"""
from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ..backend.adapter import Adapter, StageContext
from ..backend.types import LayerInfo, TransformerStructure
from ..zoo import ZOO_NAMES
from .cases import Case, Row, task_data


@dataclass
class CheckResult:
    """One check of one case on one backend. `passed` None means the check does not apply."""

    check: str
    passed: Optional[bool]
    message: str = ""
    numbers: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"check": self.check, "passed": self.passed, "message": self.message,
                "numbers": {k: float(v) for k, v in self.numbers.items()}}


@dataclass
class Outcome:
    """What one run of a case left behind: the untouched original, the compressed model, the logs."""

    case: Case
    backend: str
    original: Any
    weights_before: dict[str, np.ndarray]
    layers_before: list[LayerInfo]
    structure_before: Optional[TransformerStructure]
    model: Any = None
    error: Optional[str] = None
    exception: Optional[BaseException] = None  # what the stage raised (refusal cases compare it with the planner)
    staged: Any = None  # the copy the main spec was applied to (a refused stage must leave it untouched)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    teacher: Any = None
    teacher_weights_before: Optional[dict[str, np.ndarray]] = None
    weights_mid: Optional[dict[str, np.ndarray]] = None  # after the pre-stages, before the main spec
    seconds: float = 0.0
    workdir: Optional[Path] = None
    cache: dict[str, Any] = field(default_factory=dict)  # shared between checks (e.g. the ONNX export)


class CaseRunner:
    """Runs cases on one adapter, each at most once, and caches their check results."""

    def __init__(self, adapter: Adapter, workdir: Optional[Path] = None):
        self.adapter = adapter
        self.name = adapter.name
        self.capabilities = adapter.capabilities()
        self.claimed_rows: set[Row] = self.capabilities.claimed()
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"uc-conf-{self.name}-"))
        self._outcomes: dict[str, Outcome] = {}
        self._results: dict[tuple[str, str], CheckResult] = {}
        self.probed: set[str] = set()  # case ids run although not claimed
        self.verdicts: dict[Row, Any] = {}  # capability row -> RowVerdict (contract.py)
        self.contract: dict[str, CheckResult] = {}  # contract check name -> result (contract.py)

    # ---- claims ---------------------------------------------------------------------------------------
    def missing(self, case: Case) -> list[Row]:
        """Rows the case needs that this backend does not claim (empty: the case runs in claimed mode).

        A backend that cannot build the case's model (`Adapter.zoo_models`) misses the row
        ``("model", "zoo", <name>)``: the case is skipped there, like any unclaimed row."""
        rows = sorted(r for r in case.requires if r not in self.claimed_rows)
        if case.model not in getattr(self.adapter, "zoo_models", ZOO_NAMES):
            rows.append(("model", "zoo", case.model))
        return rows

    def refused(self, case: Case) -> list[str]:
        """Combinations the adapter refuses up front (`Adapter.refusals`) although each value is claimed."""
        refusals = getattr(self.adapter, "refusals", None)
        if refusals is None:
            return []
        return [f"{spec.technique}.{p.path}={p.value}" for spec in (*case.pre, case.spec) for p in refusals(spec)]

    def claims(self, case: Case) -> bool:
        """The case runs in claimed mode: every row claimed and the combination not refused."""
        return not self.missing(case) and not self.refused(case)

    # ---- running --------------------------------------------------------------------------------------
    def outcome(self, case: Case) -> Outcome:
        if case.id not in self._outcomes:
            if not self.claims(case):
                self.probed.add(case.id)
            self._outcomes[case.id] = self._run(case)
        return self._outcomes[case.id]

    def _run(self, case: Case) -> Outcome:
        a = self.adapter
        t0 = time.perf_counter()
        workdir = self.workdir / case.id.replace("/", "__")
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            if case.technique == "distillation" and case.student_seed is None:  # the student is cut from the teacher
                original = build_teacher(a, case.model)
            else:
                original = a.build_model(case.model, seed=case.student_seed or 0)
            layers = a.layers(original)
            out = Outcome(case, self.name, original, a.weights(original), layers, a.structure(original),
                          workdir=workdir)
        except Exception:  # the model cannot even be built: every check of the case fails with this
            return Outcome(case, self.name, None, {}, [], None, error=_tail(traceback.format_exc()), workdir=workdir)
        data = task_data(case.model, padded=case.padded)
        try:
            with case_environment(case.env):
                self._apply(case, out, original, data)
        except Exception as exc:
            out.error, out.exception = _tail(traceback.format_exc()), exc
        out.seconds = time.perf_counter() - t0
        return out

    def _apply(self, case: Case, out: Outcome, original: Any, data: Any) -> None:
        """Pre-stages, then the case's spec, on a copy of `original` (as the core runs a recipe)."""
        a = self.adapter
        model = a.copy(original)
        for spec in case.pre:
            model = a.apply(model, spec, data, StageContext())
        if case.pre:
            out.weights_mid = a.weights(model)
        ctx = StageContext()
        if case.technique == "distillation":
            out.teacher = build_teacher(a, case.model)
            out.teacher_weights_before = a.weights(out.teacher)
            ctx.teacher = out.teacher
        out.staged = model
        out.model = a.apply(model, case.spec, data, ctx)
        out.history = ctx.history

    def result(self, case: Case, check: str) -> CheckResult:
        """The (cached) result of one check of one case."""
        key = (case.id, check)
        if key not in self._results:
            from .checks import run_check

            self._results[key] = run_check(check, self.adapter, self.outcome(case))
        return self._results[key]

    def results(self, case: Case) -> dict[str, CheckResult]:
        return {check: self.result(case, check) for check in case.checks}

    def ran(self) -> dict[str, Outcome]:
        return dict(self._outcomes)

    def checked(self) -> dict[tuple[str, str], CheckResult]:
        return dict(self._results)


@contextlib.contextmanager
def case_environment(env: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """Set a case's environment variables for the stage and restore the previous values afterwards."""
    saved = {k: os.environ.get(k) for k, _ in env}
    try:
        for k, v in env:
            os.environ[k] = _free_port() if (k == "MASTER_PORT" and v == "0") else v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


#: how much a teacher's classifier is sharpened (see `teacher_weights`)
TEACHER_SHARPEN = 50.0


def build_teacher(adapter: Adapter, model: str) -> Any:
    """The distillation teacher of a case: seed 0 with a sharpened classifier.

    Zoo models get `teacher_weights` (neutral weights, the same on every backend). A backend's own user
    model (``user-encoder``) has no neutral weights: it is built with seed 0 and its classifier — named
    by the adapter's discovered structure, never guessed from names — is scaled through
    `adapter.weights` / `adapter.set_weights`.
    """
    if model in ZOO_NAMES:
        return adapter.build_model(model, seed=0, weights=teacher_weights(model))
    teacher = adapter.build_model(model, seed=0)
    structure = adapter.structure(teacher)
    head = structure.classifier if structure is not None else None
    if head is None:
        raise ValueError(f"{adapter.name}: no classifier found in {model!r} (structure: "
                         f"{structure.summary() if structure else 'none'}): cannot sharpen the teacher")
    w = adapter.weights(teacher, [head])[head]
    adapter.set_weights(teacher, {head: w * TEACHER_SHARPEN})
    return teacher


def teacher_weights(model: str) -> dict[str, np.ndarray]:
    """Zoo weights (seed 0) with a sharpened head: the zoo's N(0, 0.02) classifier gives near-uniform logits,
    which would make 'the student moves towards the teacher' a comparison of tiny numbers."""
    from .. import zoo

    weights = zoo.weights_for(model, zoo.config_for(model), seed=0)
    weights["classifier.weight"] = weights["classifier.weight"] * TEACHER_SHARPEN
    return weights


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
