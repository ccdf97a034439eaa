"""The suite judges itself: each deliberately broken adapter (unicompress.conformance.mutants) must fail the
checks that target its bug, while the real adapter it wraps passes the same checks.

Runs on the torch and onnx adapters by default; tensorflow and paddle are marked slow, and so is every
pair whose case is marked slow (`Case.slow`). Each (mutation, case, check) pair is its own test.
TensorFlow and Paddle are never loaded in one process here: each backend's tests skip unless its
framework can load safely next to what is already imported.
"""
from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

import pytest

from unicompress.backend import get_backend, register, unregister
from unicompress.conformance import contract
from unicompress.conformance.cases import CASES_BY_ID
from unicompress.conformance.mutants import MUTATIONS, MutantAdapter
from unicompress.conformance.plugin import load_xfail
from unicompress.conformance.runner import CaseRunner

#: the suite's known failures (backend/case-id/check -> reason): a mutant cannot be judged where the real
#: adapter fails for a reason on file
KNOWN = load_xfail(str(Path(__file__).resolve().parents[1] / "conformance_tests" / "xfail.yaml"))


def known_failure(backend: str, case_id: str, check: str):
    key = f"{backend}/{case_id}/{check}"
    return next((reason for pattern, reason in KNOWN.items() if fnmatch.fnmatchcase(key, pattern)), None)

BACKENDS = [pytest.param("torch", id="torch"),
            pytest.param("onnx", id="onnx"),
            pytest.param("tensorflow", id="tensorflow", marks=pytest.mark.slow),
            pytest.param("paddle", id="paddle", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def runners():
    return {}


def real_runner(runners: dict, backend: str) -> CaseRunner:
    if backend == "paddle" and "tensorflow" in sys.modules:
        pytest.skip("TensorFlow is loaded in this process: Paddle would segfault (run paddle on its own)")
    if backend not in runners:
        try:
            adapter = get_backend(backend)
            adapter.require(*adapter.framework_modules[:1])
            adapter.build_model("tiny-bert")
        except Exception as exc:  # not installed, or still being written
            pytest.skip(f"backend {backend!r} is not usable here: {type(exc).__name__}: {exc}")
        runners[backend] = CaseRunner(adapter)
    return runners[backend]


CATCHES = [pytest.param(m, case_id, check, id=f"{m}-{case_id}-{check}",
                        marks=[pytest.mark.slow] if CASES_BY_ID[case_id].slow else [])
           for m, spec in MUTATIONS.items() for case_id, check in spec.catches]


@pytest.fixture(scope="module")
def mutants():
    return {}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mutation,case_id,check", CATCHES)
def test_checks_fail_the_mutant_and_pass_the_real_adapter(runners, mutants, backend, mutation, case_id, check):
    real = real_runner(runners, backend)
    case = CASES_BY_ID[case_id]
    if not real.claims(case):
        pytest.skip(f"{backend} does not claim {case_id}")
    if (backend, mutation) not in mutants:  # one runner per mutant: its cases run once for all their checks
        mutants[backend, mutation] = CaseRunner(MutantAdapter(real.adapter, mutation))
    good = real.result(case, check)
    if good.passed is not True and known_failure(backend, case_id, check):
        pytest.xfail(f"known failure of the real adapter: {known_failure(backend, case_id, check)}")
    assert good.passed is True, f"real {backend} adapter fails {case_id}/{check}: {good.message}"
    bad = mutants[backend, mutation].result(case, check)
    assert bad.passed is False, f"mutant {mutation!r} passed {case_id}/{check}: {bad.message}"


#: the cases that pin the disagreements of issue #12 (overlapping overrides, layer maps, edge values)
PINNED = ("quantization/overrides-overlapping", "quantization/overrides-skip-then-bits",
          "distillation/feature-mse", "distillation/feature-explicit-map", "distillation/feature-drop-first-layer",
          "distillation/feature-drop-layers-explicit-map", "distillation/feature-minilm-6-to-3",
          "distillation/user-encoder-feature-mse", "distillation/user-encoder-feature-drop-layers",
          "pruning/nm-63-64-refused", "pruning/nm-63-64-wide-layers", "pruning/head-99-refused",
          "pruning/block-64x64-refused")


def test_every_pinned_case_has_a_mutant():
    caught = {case_id for spec in MUTATIONS.values() for case_id, _ in spec.catches}
    assert set(PINNED) <= set(CASES_BY_ID)
    assert sorted(set(PINNED) - caught) == []
    assert all(CASES_BY_ID[c].expects_refusal for c in PINNED if c.endswith("-refused"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_false_claims_fail_their_rows(runners, backend):
    real = real_runner(runners, backend)
    mutant = CaseRunner(MutantAdapter(real.adapter, "false_claim"))
    extra = sorted(mutant.claimed_rows - real.claimed_rows)
    if not extra:
        pytest.skip(f"{backend} claims every row: nothing to claim falsely")
    # the rows the real adapter does not claim are exactly the ones the suite must now fail (or flag)
    verdicts = {row: contract.judge_claimed_row(mutant, row).status for row in extra[:12]}
    assert "fail" in verdicts.values() or "no case" in verdicts.values(), verdicts
    assert all(contract.judge_claimed_row(real, row).status == "not claimed" for row in extra[:12])


@pytest.mark.parametrize("backend", BACKENDS)
def test_dirty_failure_is_caught_and_the_real_adapter_keeps_the_input(runners, backend):
    real = real_runner(runners, backend)
    good = contract.check_failure_isolation(real)
    if good.passed is None:
        pytest.skip(good.message)
    assert good.passed is True, good.message
    mutant = MutantAdapter(real.adapter, "dirty_failure")
    register(mutant.name, mutant, replace=True)
    try:
        bad = contract.check_failure_isolation(CaseRunner(mutant))
    finally:
        unregister(mutant.name)
    assert bad.passed is False and "changed" in bad.message, bad.message


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_adapter_refuses_unclaimed_specs_untouched(runners, backend):
    real = real_runner(runners, backend)
    result = contract.check_refusal(real)
    if result.passed is None:
        pytest.skip(result.message)
    assert result.passed is True, result.message
    assert result.numbers["tried"] >= 1


def test_mutant_rejects_unknown_mutations():
    class Dummy:
        name, requirements, framework_modules = "d", (), ()
    with pytest.raises(ValueError, match="unknown mutation"):
        MutantAdapter(Dummy(), "nonsense")  # type: ignore[arg-type]
