"""The suite judges itself: each deliberately broken adapter (unicompress.conformance.mutants) must fail the
checks that target its bug, while the real adapter it wraps passes the same checks.

Runs on the torch adapter by default (the first one ready); tensorflow and paddle are marked slow.
TensorFlow and Paddle are never loaded in one process here: each backend's tests skip unless its
framework can load safely next to what is already imported.
"""
from __future__ import annotations

import sys

import pytest

from unicompress.backend import get_backend, register, unregister
from unicompress.conformance import contract
from unicompress.conformance.cases import CASES_BY_ID
from unicompress.conformance.mutants import MUTATIONS, MutantAdapter
from unicompress.conformance.runner import CaseRunner

BACKENDS = [pytest.param("torch", id="torch"),
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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mutation", [m for m, spec in MUTATIONS.items() if spec.catches])
def test_checks_fail_the_mutant_and_pass_the_real_adapter(runners, backend, mutation):
    real = real_runner(runners, backend)
    mutant = CaseRunner(MutantAdapter(real.adapter, mutation))
    for case_id, check in MUTATIONS[mutation].catches:
        case = CASES_BY_ID[case_id]
        if not real.claims(case):
            pytest.skip(f"{backend} does not claim {case_id}")
        good = real.result(case, check)
        assert good.passed is True, f"real {backend} adapter fails {case_id}/{check}: {good.message}"
        bad = mutant.result(case, check)
        assert bad.passed is False, f"mutant {mutation!r} passed {case_id}/{check}: {bad.message}"


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
