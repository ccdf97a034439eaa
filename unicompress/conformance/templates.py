"""Template test classes: one test per (backend x case x check), skipped by declared capability.

Run them against any installed adapter — ours or a third party's — with one command::

    pytest -p unicompress.conformance.plugin --pyargs unicompress.conformance.templates --backend mine

(`--backend` may repeat; leave it out to test every backend registered under the `unicompress.backends`
entry point group.) Options: ``--conformance-report DIR`` (Markdown + JSON report, default
``build/conformance``), ``--conformance-xfail FILE`` (YAML mapping of glob pattern -> reason, patterns match
``backend/case-id/check``, ``backend/row/technique.field=value/claimed`` (or ``/probe``), ``backend/contract/name`` and the test id),
``--strict-claims`` (a row that passes but is not claimed fails), ``--no-probe`` (do not try unclaimed rows),
``--no-cross-backend``. A test is skipped only when the backend does not claim a row the case needs
(``adapter.capabilities()``), never because of the backend's name.

To subclass them in your own test module instead::

    from unicompress.conformance.templates import *  # noqa: F401,F403  (collected by pytest)
"""
from __future__ import annotations

from typing import ClassVar

import pytest

from .cases import Case, row_id
from .runner import CaseRunner


def expect(runner: CaseRunner, case: Case, check: str) -> None:
    """Skip when the backend does not claim the case; otherwise assert the check passed."""
    missing = runner.missing(case)
    if missing:
        pytest.skip(f"{runner.name} does not claim {', '.join(row_id(r) for r in missing)}")
    refused = runner.refused(case)
    if refused:
        pytest.skip(f"{runner.name} refuses this combination up front: {', '.join(refused)}")
    result = runner.result(case, check)
    if result.passed is None:
        pytest.skip(f"not applicable: {result.message}")
    assert result.passed, f"[{runner.name}] {case.id} / {check}: {result.message}"


class ConformanceTemplate:
    """Base of the template classes. `technique` selects the cases; each `test_<check>` method runs
    that check on every case of the technique that lists it (the plugin parametrizes `case`)."""

    technique: ClassVar[str] = ""


class TestPruning(ConformanceTemplate):
    technique = "pruning"

    def test_applies(self, conformance_runner, case):
        expect(conformance_runner, case, "applies")

    def test_sparsity(self, conformance_runner, case):
        expect(conformance_runner, case, "sparsity")

    def test_pattern(self, conformance_runner, case):
        expect(conformance_runner, case, "pattern")

    def test_reference_mask(self, conformance_runner, case):
        expect(conformance_runner, case, "reference_mask")

    def test_schedule(self, conformance_runner, case):
        expect(conformance_runner, case, "schedule")

    def test_refused(self, conformance_runner, case):
        expect(conformance_runner, case, "refused")

    def test_runs_finite(self, conformance_runner, case):
        expect(conformance_runner, case, "runs_finite")

    def test_onnx(self, conformance_runner, case):
        expect(conformance_runner, case, "onnx")


class TestQuantization(ConformanceTemplate):
    technique = "quantization"

    def test_applies(self, conformance_runner, case):
        expect(conformance_runner, case, "applies")

    def test_quantized_layers(self, conformance_runner, case):
        expect(conformance_runner, case, "quantized_layers")

    def test_layer_settings(self, conformance_runner, case):
        expect(conformance_runner, case, "layer_settings")

    def test_levels(self, conformance_runner, case):
        expect(conformance_runner, case, "levels")

    def test_qparams(self, conformance_runner, case):
        expect(conformance_runner, case, "qparams")

    def test_dequant_error(self, conformance_runner, case):
        expect(conformance_runner, case, "dequant_error")

    def test_output_close(self, conformance_runner, case):
        expect(conformance_runner, case, "output_close")

    def test_activation_bits(self, conformance_runner, case):
        expect(conformance_runner, case, "activation_bits")

    def test_loss_falls(self, conformance_runner, case):
        expect(conformance_runner, case, "loss_falls")

    def test_runs_finite(self, conformance_runner, case):
        expect(conformance_runner, case, "runs_finite")

    def test_onnx(self, conformance_runner, case):
        expect(conformance_runner, case, "onnx")


class TestDistillation(ConformanceTemplate):
    technique = "distillation"

    def test_applies(self, conformance_runner, case):
        expect(conformance_runner, case, "applies")

    def test_teacher_frozen(self, conformance_runner, case):
        expect(conformance_runner, case, "teacher_frozen")

    def test_loss_falls(self, conformance_runner, case):
        expect(conformance_runner, case, "loss_falls")

    def test_agreement_rises(self, conformance_runner, case):
        expect(conformance_runner, case, "agreement_rises")

    def test_student_layers(self, conformance_runner, case):
        expect(conformance_runner, case, "student_layers")

    def test_layer_map(self, conformance_runner, case):
        expect(conformance_runner, case, "layer_map")

    def test_runs_finite(self, conformance_runner, case):
        expect(conformance_runner, case, "runs_finite")

    def test_onnx(self, conformance_runner, case):
        expect(conformance_runner, case, "onnx")


class TestLowRank(ConformanceTemplate):
    technique = "low_rank"

    def test_applies(self, conformance_runner, case):
        expect(conformance_runner, case, "applies")

    def test_rank(self, conformance_runner, case):
        expect(conformance_runner, case, "rank")

    def test_reconstruction(self, conformance_runner, case):
        expect(conformance_runner, case, "reconstruction")

    def test_runs_finite(self, conformance_runner, case):
        expect(conformance_runner, case, "runs_finite")

    def test_onnx(self, conformance_runner, case):
        expect(conformance_runner, case, "onnx")


class TestFineTune(ConformanceTemplate):
    technique = "finetune"

    def test_applies(self, conformance_runner, case):
        expect(conformance_runner, case, "applies")

    def test_loss_falls(self, conformance_runner, case):
        expect(conformance_runner, case, "loss_falls")

    def test_keeps_zeros(self, conformance_runner, case):
        expect(conformance_runner, case, "keeps_zeros")

    def test_runs_finite(self, conformance_runner, case):
        expect(conformance_runner, case, "runs_finite")

    def test_onnx(self, conformance_runner, case):
        expect(conformance_runner, case, "onnx")


class TestContract(ConformanceTemplate):
    """The promises of the core that every backend shares: refuse first, never touch the input,
    claim exactly what passes."""

    def test_claims_are_known_rows(self, conformance_runner):
        from .contract import unknown_claims

        unknown = unknown_claims(conformance_runner.capabilities)
        assert not unknown, f"[{conformance_runner.name}] claims rows no spec can produce: {unknown}"

    def test_claimed_row_passes(self, conformance_runner, row):
        from .contract import judge_claimed_row

        verdict = judge_claimed_row(conformance_runner, row)
        if verdict.status == "not claimed":
            pytest.skip(f"{conformance_runner.name} does not claim {row_id(row)}")
        assert verdict.status == "pass", f"[{conformance_runner.name}] {row_id(row)}: {verdict.detail}"

    def test_unclaimed_row_probe(self, conformance_runner, row, request):
        from .contract import probe_unclaimed_row

        if not request.config.getoption("conformance_probe"):
            pytest.skip("probing disabled (--no-probe)")
        verdict = probe_unclaimed_row(conformance_runner, row)
        if verdict.status in ("claimed", "not probed", "inconclusive"):
            pytest.skip(f"{row_id(row)}: {verdict.status} ({verdict.detail})")
        if verdict.status == "passes but not claimed" and request.config.getoption("conformance_strict_claims"):
            pytest.fail(f"[{conformance_runner.name}] {row_id(row)} passes but is not claimed: {verdict.detail}")

    def test_refuses_unclaimed_before_touching(self, conformance_runner):
        from .contract import check_refusal

        result = check_refusal(conformance_runner)
        if result.passed is None:
            pytest.skip(result.message)
        assert result.passed, f"[{conformance_runner.name}] {result.message}"

    def test_failing_stage_leaves_input_unchanged(self, conformance_runner):
        from .contract import check_failure_isolation

        result = check_failure_isolation(conformance_runner)
        if result.passed is None:
            pytest.skip(result.message)
        assert result.passed, f"[{conformance_runner.name}] {result.message}"


class TestCrossBackend:
    """Same weights, same spec: the same masks and integer weights on every installed backend
    (each backend in its own subprocess: TensorFlow before Paddle in one process crashes)."""

    def test_agreement(self, cross_backend_results, cross_case):
        from .cross_backend import judge_pairs

        pairs = judge_pairs(cross_backend_results, cross_case)
        if not pairs:
            pytest.skip(f"{cross_case}: fewer than two backends produced it")
        bad = [p for p in pairs if not p["ok"]]
        assert not bad, "; ".join(f"{p['a']} vs {p['b']}: {p['detail']}" for p in bad)
