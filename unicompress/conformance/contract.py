"""The contract every backend shares: the capability table is exactly what passes, a spec outside it is
refused before the model is touched, and a failing stage leaves the input model bit-for-bit unchanged.

Example::

    judge_claimed_row(runner, ("pruning", "granularity", "n_m")).status   # "pass"
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np

from ..backend.capabilities import Support
from ..backend.types import TaskData
from .cases import CASES, Case, Row, cases_for_row, row_id, task_data, universe
from .runner import CaseRunner, CheckResult


@dataclass
class RowVerdict:
    """The standing of one capability row on one backend.

    status: "pass", "fail", "no case" (claimed, nothing tests it: a failure), "not claimed",
    "passes but not claimed", "fails (not claimed)", "not probed", "inconclusive", "claimed".
    """

    status: str
    detail: str = ""
    cases: list[str] = field(default_factory=list)
    support: str = "unsupported"

    def to_dict(self) -> dict:
        return {"status": self.status, "detail": self.detail, "cases": list(self.cases), "support": self.support}


def unknown_claims(capabilities: Any) -> list[str]:
    """Claimed rows no spec can produce (a typo such as 'per-channel', or a field that does not exist)."""
    known = set(universe())
    return sorted(row_id(r) for r in capabilities.claimed() if r not in known)


def _failing_checks(runner: CaseRunner, case: Case) -> list[str]:
    return [f"{case.id}/{name}: {r.message.splitlines()[0] if r.message else 'failed'}"
            for name, r in runner.results(case).items() if r.passed is False]


def judge_claimed_row(runner: CaseRunner, row: Row, cases: Iterable[Case] = CASES) -> RowVerdict:
    """Pass when the row is claimed and every case that exercises it (and can run) passes every check."""
    support = runner.capabilities.support(*row)
    if support is Support.unsupported:
        return RowVerdict("not claimed", support=support.value)
    exercising = cases_for_row(row, cases)
    if not exercising:
        v = RowVerdict("no case", "claimed, but no conformance case exercises it", support=support.value)
    else:
        runnable = [c for c in exercising if runner.claims(c)]
        if not runnable:
            needs = sorted({row_id(r) for c in exercising for r in runner.missing(c)})
            refused = sorted({x for c in exercising for x in runner.refused(c)})
            v = RowVerdict("no case", f"claimed, but every case exercising it also needs unclaimed {needs}"
                           + (f" or is refused as a combination ({refused})" if refused else ""),
                           support=support.value)
        else:
            failures = [f for c in runnable for f in _failing_checks(runner, c)]
            ids = [c.id for c in runnable]
            v = RowVerdict("fail" if failures else "pass", "; ".join(failures[:4]) if failures else
                           f"{len(runnable)} case(s) pass", ids, support.value)
    runner.verdicts[row] = v
    return v


def probe_unclaimed_row(runner: CaseRunner, row: Row, cases: Iterable[Case] = CASES) -> RowVerdict:
    """Try the simplest case that isolates an unclaimed row (all its other rows claimed)."""
    if runner.capabilities.support(*row) is not Support.unsupported:
        return RowVerdict("claimed")
    # a case that expects the core planner's refusal passes whatever the backend can do: it proves nothing here
    isolating = [c for c in cases_for_row(row, cases) if set(runner.missing(c)) == {row} and not runner.refused(c)
                 and not c.expects_refusal]
    if not isolating:
        v = RowVerdict("not probed", "no case isolates it: every case also needs another unclaimed row")
    else:
        case = isolating[0]
        failures = _failing_checks(runner, case)
        if failures:
            v = RowVerdict("fails (not claimed)", "; ".join(failures[:2]), [case.id])
        elif row in case.unobservable:
            v = RowVerdict("inconclusive", f"{case.id} passes, but no check can observe {row_id(row)}", [case.id])
        else:
            v = RowVerdict("passes but not claimed", f"{case.id} passes every check", [case.id])
    runner.verdicts[row] = v
    return v


def _weights_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    return [n for n in a if n not in b or a[n].shape != b[n].shape or not np.array_equal(a[n], b[n])]


def check_refusal(runner: CaseRunner, limit: int = 3) -> CheckResult:
    """`compress` with a spec outside the table raises CapabilityError and leaves the model bit-for-bit unchanged."""
    from ..api import compress
    from ..errors import CapabilityError

    candidates = []
    for row in universe():
        if row in runner.claimed_rows:
            continue
        case = next((c for c in cases_for_row(row) if not c.expects_refusal), None)
        if case is not None and case.id not in {c.id for c in candidates}:
            candidates.append(case)
        if len(candidates) >= limit:
            break
    # a combination the adapter refuses (Adapter.refusals) must be refused the same way
    combo = next((c for c in CASES if not runner.missing(c) and runner.refused(c)), None)
    if combo is not None:
        candidates.append(combo)
    if not candidates:
        return _store(runner, CheckResult("refuses_unclaimed", None, "the backend claims every row: nothing to refuse"))
    a, fails = runner.adapter, []
    for case in candidates:
        model = a.build_model(case.model, seed=0)
        before = a.weights(model)
        try:
            compress(model, case.spec, task_data(case.model), backend=runner.name, progress=False,
                     teacher=a.build_model(case.model, seed=0) if case.technique == "distillation" else None)
            why = row_id(runner.missing(case)[0]) + " is not claimed" if runner.missing(case) else \
                f"the adapter refuses {runner.refused(case)}"
            fails.append(f"{case.id}: compress accepted it although {why}")
        except CapabilityError:
            pass
        except Exception as exc:
            fails.append(f"{case.id}: raised {type(exc).__name__} instead of CapabilityError: {exc}")
        changed = _weights_equal(before, a.weights(model))
        if changed:
            fails.append(f"{case.id}: the refused model changed ({changed[:3]})")
    return _store(runner, CheckResult("refuses_unclaimed", not fails, "; ".join(fails) or
                                      f"refused {len(candidates)} unclaimed specs untouched", {"tried": len(candidates)}))


class PoisonedData(RuntimeError):
    """Raised by the data of the failure-isolation check, part-way through a stage."""


def poisoned(data: TaskData, good_batches: int = 2) -> TaskData:
    """The same data, but every iterator raises PoisonedData after `good_batches` batches."""
    def cut(source):
        if source is None:
            return None

        def gen():
            for i, item in enumerate(source()):
                if i >= good_batches:
                    raise PoisonedData(f"poisoned data: batch {i} (the conformance suite fails this stage on purpose)")
                yield item
        return gen
    return TaskData(train=cut(data.train), calibration=cut(data.calibration), evaluation=None,
                    num_labels=data.num_labels)


#: specs that read data while they run, tried in this order for the failure-isolation check
_FAILURE_CASES = ("finetune/after-pruning", "quantization/qat-int8", "pruning/polynomial-60",
                  "distillation/response", "quantization/static-int8-minmax")


def check_failure_isolation(runner: CaseRunner) -> CheckResult:
    """A stage that fails mid-way (its data raises) leaves the input model's weights and outputs bit-for-bit."""
    from ..api import compress
    from .cases import CASES_BY_ID, eval_inputs

    a = runner.adapter
    case: Optional[Case] = next((CASES_BY_ID[i] for i in _FAILURE_CASES
                                 if runner.claims(CASES_BY_ID[i])), None)
    if case is None:
        return _store(runner, CheckResult("failure_isolation", None, "no claimed spec reads data while it runs"))
    model = a.build_model(case.model, seed=case.student_seed or 0)
    before, x = a.weights(model), eval_inputs(case.model)
    y_before = np.asarray(a.run(model, x))
    raised: Optional[BaseException] = None
    try:
        compress(model, case.spec, poisoned(task_data(case.model)), backend=runner.name, progress=False,
                 teacher=a.build_model(case.model, seed=0) if case.technique == "distillation" else None)
    except Exception as exc:  # noqa: BLE001 - any failure will do; what matters is the input afterwards
        raised = exc
    fails = []
    if raised is None:
        fails.append(f"{case.id}: the stage finished although its data raised part-way")
    changed = _weights_equal(before, a.weights(model))
    if changed:
        fails.append(f"{case.id}: the input model changed after a failing stage: {changed[:3]}")
    if not np.array_equal(y_before, np.asarray(a.run(model, x))):
        fails.append(f"{case.id}: the input model's outputs changed after a failing stage")
    msg = "; ".join(fails) or f"{case.id} failed with {type(raised).__name__}; input unchanged bit for bit"
    return _store(runner, CheckResult("failure_isolation", not fails, msg))


def _store(runner: CaseRunner, result: CheckResult) -> CheckResult:
    runner.contract[result.check] = result
    return result
