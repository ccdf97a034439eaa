"""Self-tests of the conformance suite's numpy side: the pattern helpers, the case library, the report.

These need no framework; the mutant tests (test_conformance_mutants.py) run the checks on a real adapter.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from unicompress import reference as ref
from unicompress.conformance import checks
from unicompress.conformance.cases import (CASES, CASES_BY_ID, Case, cases_for_row, eval_inputs, row_id, rows_of,
                                           task_data, uncovered_rows, universe)
from unicompress.conformance.contract import poisoned, unknown_claims
from unicompress.backend import Capabilities, Support, build_table
from unicompress.specs import PruningSpec, QuantizationSpec


def test_every_row_of_the_universe_has_a_case():
    assert uncovered_rows() == []
    assert len(universe()) == 70  # 5+4+2+2+2+1 pruning, 4+15+15+2+2+2+3+1 quantization, 3+2+1, 2, 2


def test_universe_follows_the_spec_definitions():
    rows = set(universe())
    assert ("quantization", "bits", "2") in rows and ("quantization", "bits", "16") in rows
    assert ("quantization", "bits", "17") not in rows
    assert ("pruning", "scope", "global") in rows and ("pruning", "remove_pruned", "true") in rows


def test_cases_name_existing_checks_and_unique_ids():
    assert len(CASES_BY_ID) == len(CASES)
    for case in CASES:
        unknown = set(case.checks) - set(checks.CHECKS)
        assert not unknown, (case.id, unknown)
        assert case.exercises, case.id


def test_case_rows_come_from_the_spec():
    case = CASES_BY_ID["pruning/nm-2-4"]
    assert ("pruning", "granularity", "n_m") in case.exercises
    assert set(rows_of(PruningSpec(granularity="n_m", n=2, m=4))) == case.exercises
    ft = CASES_BY_ID["finetune/after-pruning"]
    assert ("pruning", "granularity", "unstructured") in ft.requires - ft.exercises


def test_cases_for_row_puts_the_simplest_first():
    found = cases_for_row(("quantization", "overrides", "true"))
    assert [c.id for c in found] == ["quantization/overrides-mixed", "quantization/overrides-overlapping",
                                     "quantization/overrides-skip-then-bits"]
    nm = cases_for_row(("pruning", "granularity", "n_m"))
    assert nm and all(("pruning", "granularity", "n_m") in c.exercises for c in nm)


def test_task_data_is_deterministic_and_labelled():
    a, b = task_data("tiny-bert"), task_data("tiny-bert")
    (xa, ya), (xb, yb) = next(iter(a.train())), next(iter(b.train()))
    assert np.array_equal(xa["input_ids"], xb["input_ids"]) and np.array_equal(ya, yb)
    assert ya.dtype == np.int64 and set(np.unique(ya)) <= {0, 1, 2}
    assert sum(1 for _ in a.train()) == 64
    vit = next(iter(task_data("tiny-vit").calibration()))
    assert vit["pixel_values"].shape == (8, 28, 28)
    assert eval_inputs("tiny-bert")["attention_mask"][-1].sum() < 16  # padded rows in held-out inputs


def test_nm_violations_counts_groups_short_of_zeros():
    w = np.arange(1, 17, dtype=np.float32).reshape(2, 8)
    assert checks.nm_violations(w, 2, 4) == 4
    w2 = w * ref.nm_mask(w, 2, 4)
    assert checks.nm_violations(w2, 2, 4) == 0
    w2[0, 0] = w2[0, 1] = 5.0  # first group now has no zeros... or one
    assert checks.nm_violations(w2, 2, 4) == 1


def test_partial_blocks_and_whole_rows():
    w = np.ones((4, 4), np.float32)
    w[:2, :2] = 0
    assert checks.partial_blocks(w, (2, 2)) == 0
    w[2, 2] = 0
    assert checks.partial_blocks(w, (2, 2)) == 1
    keep, partial = checks.whole_rows(np.array([[0, 0], [1, 2], [0, 3]], np.float32))
    assert keep.tolist() == [False, True, True] and partial == 1


def test_match_rows_finds_the_surviving_rows():
    before = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert checks.match_rows(before[[0, 2]], before).tolist() == [True, False, True, False]
    assert checks.match_rows(before[[0, 2]] + 1.0, before) is None


def test_schedule_errors_allow_one_step_of_slack():
    hist = [(s, ref.polynomial_sparsity(s + 1, 0.6, 0.0, 0, 10, 3.0)) for s in range(0, 11, 2)]
    errs = checks.schedule_errors(hist, 0.6, 0.0, 0, 10, 3.0)
    assert max(abs(v - e) for _, v, e in errs) < 1e-12
    off = [(s, v + 0.1) for s, v in hist]
    assert max(abs(v - e) for _, v, e in checks.schedule_errors(off, 0.6, 0.0, 0, 10, 3.0)) > 0.05


def test_loss_fell_compares_quarters():
    assert checks.loss_fell([(i, 2.0 - 0.1 * i) for i in range(8)], 0.02)[0]
    assert not checks.loss_fell([(i, 1.0) for i in range(8)], 0.02)[0]
    assert not checks.loss_fell([(i, 1.0 + 0.1 * i) for i in range(8)], 0.0)[0]


def test_kl_divergence_is_zero_for_equal_logits_and_positive_otherwise():
    t = np.array([[1.0, 2.0, 0.5]])
    assert checks.kl_divergence(t, t) == pytest.approx(0.0, abs=1e-12)
    # p = (1/2, 1/2), q = (1/4, 3/4): KL = ln(4/3) / 2
    assert checks.kl_divergence(np.zeros((1, 2)), np.array([[0.0, np.log(3.0)]])) == pytest.approx(0.5 * np.log(4 / 3))


def test_effective_quant_applies_the_first_matching_override():
    spec = QuantizationSpec(mode="weight_only", overrides=[{"pattern": "*.ffn*", "bits": 4},
                                                           {"pattern": "*.skip", "skip": True}])
    assert checks.effective_quant(spec, "l0.ffn.in") == {"bits": 4, "symmetric": True, "per_channel": True}
    assert checks.effective_quant(spec, "l0.skip") is None
    assert checks.effective_quant(spec, "l0.attn")["bits"] == 8


def test_numerical_rank():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 3)) @ rng.normal(size=(3, 12))
    assert checks.numerical_rank(w) == 3


def test_unknown_claims_catch_typos():
    caps = Capabilities("x", build_table([("quantization", "granularity", ["per-channel", "per_tensor"],
                                           Support.native)]))
    assert unknown_claims(caps) == ["quantization.granularity=per-channel"]


def test_poisoned_data_raises_part_way():
    data = poisoned(task_data("tiny-bert"), good_batches=2)
    it = iter(data.train())
    next(it), next(it)
    with pytest.raises(RuntimeError, match="poisoned"):
        next(it)


def test_report_markdown_and_matrix_from_data(tmp_path):
    from unicompress.conformance.report import capability_matrix_markdown, to_markdown, write_report

    data = {"generated": "now", "unicompress": "0", "universe": ["pruning.granularity=n_m", "low_rank.by=rank"],
            "backends": {"a": {"rows": {"pruning.granularity=n_m": {"status": "pass", "support": "emulated",
                                                                    "detail": "", "cases": []},
                                        "low_rank.by=rank": {"status": "passes but not claimed",
                                                             "support": "unsupported", "detail": "x", "cases": []}},
                               "tests": {"passed": 3}, "row_totals": {"pass": 1}, "cases": {}, "contract": {}}},
            "cross_backend": None, "tests": {}}
    matrix = capability_matrix_markdown(data)
    assert "| `pruning.granularity=n_m` | pass (emulated) |" in matrix
    assert "passes, not claimed" in matrix
    written = write_report(data, tmp_path)
    assert json.loads(written["json"].read_text())["backends"]["a"]["tests"] == {"passed": 3}
    assert "# unicompress conformance report" in written["markdown"].read_text()
    assert "low_rank.by=rank" in to_markdown(data)


def test_capability_matrix_script(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    data = {"universe": ["low_rank.by=rank"], "backends": {"b": {"rows": {"low_rank.by=rank": {
        "status": "fail", "support": "native"}}}}}
    src = tmp_path / "c.json"
    src.write_text(json.dumps(data))
    out = tmp_path / "matrix.md"
    script = Path(__file__).resolve().parents[1] / "scripts" / "capability_matrix.py"
    subprocess.run([sys.executable, str(script), str(src), "--out", str(out)], check=True)
    assert "| `low_rank.by=rank` | **FAIL** |" in out.read_text()


def test_xfail_file_loads_pattern_to_reason(tmp_path):
    from unicompress.conformance.plugin import load_xfail

    f = tmp_path / "x.yaml"
    f.write_text('"torch/quantization/*/qparams": "observer is moving-average"\n')
    assert load_xfail(str(f)) == {"torch/quantization/*/qparams": "observer is moving-average"}
    assert load_xfail(None) == {}


def test_row_id_format():
    assert row_id(("pruning", "schedule.kind", "polynomial")) == "pruning.schedule.kind=polynomial"
    assert isinstance(CASES[0], Case)


def test_cross_backend_compare_and_npz_round_trip(tmp_path):
    from unicompress.conformance import cross_backend as cb

    mask = (np.arange(64).reshape(8, 8) % 3 == 0).astype(np.uint8)
    q = np.arange(-32, 32, dtype=np.int64).reshape(8, 8)
    path = cb.save(tmp_path / "a.npz", {cb._key("pruning/x", "mask", "l0"): mask,
                                        cb._key("pruning/x", "q", "l0"): q}, {"case/y": "boom"})
    arrays, errors = cb.load(path)
    assert errors == {"case/y": "boom"} and np.array_equal(arrays[cb._key("pruning/x", "q", "l0")], q)
    same = cb.compare({"mask::l0": mask, "q::l0": q}, {"mask::l0": mask, "q::l0": q})
    assert same["ok"] and same["agreement"] == 1.0
    q2 = q.copy()
    q2[0, 0] += 1  # off by one in 1 of 64 entries: 1.6% of entries, above the 0.5% rounding allowance
    assert not cb.compare({"q::l0": q}, {"q::l0": q2})["ok"]
    flipped = mask.copy()
    flipped[0, :] = 1 - flipped[0, :]
    assert not cb.compare({"mask::l0": mask}, {"mask::l0": flipped})["ok"]
    extra = cb.compare({"q::l0": q}, {"q::l0": q, "q::head": q})
    assert not extra["ok"] and "one backend only" in extra["detail"] and extra["agreement"] == 1.0
    cross = {"arrays": {"a": {cb._key("pruning/x", "mask", "l0"): mask},
                        "b": {cb._key("pruning/x", "mask", "l0"): mask}}}
    pairs = cb.judge_pairs(cross, "pruning/x")
    assert [(p["a"], p["b"], p["ok"]) for p in pairs] == [("a", "b", True)]


class _ClaimsOnly:
    """Just enough of an adapter for the row bookkeeping: a table, no model (nothing may be run)."""

    name = "claims-only"

    def __init__(self, rows):
        self._caps = Capabilities(self.name, build_table([(t, f, [v], Support.native) for t, f, v in rows]))

    def capabilities(self):
        return self._caps


def test_row_verdicts_without_running_anything():
    from unicompress.conformance.contract import judge_claimed_row, probe_unclaimed_row
    from unicompress.conformance.runner import CaseRunner

    runner = CaseRunner(_ClaimsOnly([("pruning", "scope", "global"), ("pruning", "granularity", "diagonal")]))
    lonely = judge_claimed_row(runner, ("pruning", "scope", "global"))
    assert lonely.status == "no case" and "pruning.granularity=unstructured" in lonely.detail
    unknown = judge_claimed_row(runner, ("pruning", "granularity", "diagonal"))
    assert unknown.status == "no case" and "no conformance case" in unknown.detail
    assert judge_claimed_row(runner, ("low_rank", "by", "rank")).status == "not claimed"
    assert probe_unclaimed_row(runner, ("pruning", "criterion", "movement")).status == "not probed"
    assert probe_unclaimed_row(runner, ("pruning", "scope", "global")).status == "claimed"
    assert set(runner.verdicts) == {("pruning", "scope", "global"), ("pruning", "granularity", "diagonal"),
                                    ("pruning", "criterion", "movement")}
    assert runner.ran() == {}  # nothing was built or run


def test_importing_the_suite_loads_no_framework_nor_pytest():
    import subprocess
    import sys

    code = ("import sys, unicompress.conformance, unicompress.conformance.checks, unicompress.conformance.contract, "
            "unicompress.conformance.mutants, unicompress.conformance.cross_backend, unicompress.onnx; "
            "print(sorted({'torch', 'tensorflow', 'paddle', 'pytest', 'onnxruntime'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_case_environment_sets_a_free_port_and_restores(monkeypatch):
    import os

    from unicompress.conformance.cases import ONE_WORKER_LAUNCH
    from unicompress.conformance.runner import case_environment

    monkeypatch.setenv("RANK", "7")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with case_environment(ONE_WORKER_LAUNCH):
        assert os.environ["RANK"] == "0" and os.environ["WORLD_SIZE"] == "1"
        assert int(os.environ["MASTER_PORT"]) > 0
    assert os.environ["RANK"] == "7" and "MASTER_PORT" not in os.environ
    assert CASES_BY_ID["finetune/data-parallel"].env == ONE_WORKER_LAUNCH


def test_refused_combinations_take_a_case_out_of_claimed_mode():
    from unicompress.conformance.contract import judge_claimed_row
    from unicompress.conformance.runner import CaseRunner
    from unicompress.errors import Problem

    rows = [("pruning", "granularity", "n_m"), ("pruning", "criterion", "magnitude"),
            ("pruning", "scope", "per_layer"), ("pruning", "schedule.kind", "one_shot")]

    class RefusesNM(_ClaimsOnly):
        def refusals(self, spec):
            return [Problem("granularity", "n_m", "not with this toolkit")] if spec.granularity.value == "n_m" else []

    runner = CaseRunner(RefusesNM(rows))
    case = CASES_BY_ID["pruning/nm-2-4"]
    assert runner.missing(case) == [] and runner.refused(case) == ["pruning.granularity=n_m"]
    assert not runner.claims(case)
    verdict = judge_claimed_row(runner, ("pruning", "granularity", "n_m"))
    assert verdict.status == "no case" and "refused as a combination" in verdict.detail


# ---- the cases pinning issue #12's disagreements, and their mutants' spec rewrites ------------------------------

BERT_ATTENTION = ("query", "key", "value")


def _bert_layer_names(layers: int = 2) -> list[str]:
    names = []
    for i in range(layers):
        p = f"bert.encoder.layer.{i}"
        names += [f"{p}.attention.self.{x}" for x in BERT_ATTENTION]
        names += [f"{p}.attention.output.dense", f"{p}.intermediate.dense", f"{p}.output.dense"]
    return names


def test_overlapping_override_case_follows_the_one_rule():
    spec = CASES_BY_ID["quantization/overrides-skip-then-bits"].spec
    got = {n.split("layer.0.")[1]: checks.effective_quant(spec, n) for n in _bert_layer_names(1)}
    assert got == {"attention.self.query": {"bits": 4, "symmetric": True, "per_channel": True},
                   "attention.self.key": {"bits": 6, "symmetric": True, "per_channel": True},
                   "attention.self.value": {"bits": 4, "symmetric": True, "per_channel": True},
                   "attention.output.dense": None,
                   "intermediate.dense": {"bits": 8, "symmetric": True, "per_channel": False},
                   "output.dense": {"bits": 8, "symmetric": True, "per_channel": False}}


def test_override_mutants_rewrite_to_the_wrong_rules():
    from unicompress.conformance.mutants import _rewrite_overrides

    spec = CASES_BY_ID["quantization/overrides-skip-then-bits"].spec
    names = _bert_layer_names(1)
    first = _rewrite_overrides(spec, names, first_match=True)
    last = _rewrite_overrides(spec, names, first_match=False)
    key, out = "bert.encoder.layer.0.attention.self.key", "bert.encoder.layer.0.attention.output.dense"
    assert checks.effective_quant(first, key)["bits"] == 4  # the first match only
    assert checks.effective_quant(first, out) == {"bits": 4, "symmetric": True, "per_channel": True}
    assert checks.effective_quant(last, key)["bits"] == 6
    assert checks.effective_quant(last, out) == {"bits": 4, "symmetric": True, "per_channel": False}  # un-skipped
    assert {o.pattern for o in first.overrides} <= set(names)


def test_layer_map_cases_and_the_kept_layers_mutant_disagree():
    from unicompress.conformance.mutants import _wrong_layer_map

    minilm = CASES_BY_ID["distillation/feature-minilm-6-to-3"].spec
    assert minilm.student.layers_to_keep(6) == [0, 2, 5]
    assert minilm.resolved_layer_map(3, 6) == [(0, 1), (1, 3), (2, 5)]
    assert _wrong_layer_map(minilm, 6, kept=True).resolved_layer_map(3, 6) == [(0, 0), (1, 2), (2, 5)]
    first = CASES_BY_ID["distillation/feature-drop-first-layer"].spec
    assert first.resolved_layer_map(1, 2) == [(0, 1)]
    assert _wrong_layer_map(first, 2, kept=True).resolved_layer_map(1, 2) == [(0, 0)]
    same = CASES_BY_ID["distillation/user-encoder-feature-mse"].spec
    assert same.resolved_layer_map(2, 2) == [(0, 0), (1, 1)]
    assert _wrong_layer_map(same, 2, kept=False).resolved_layer_map(2, 2) == [(0, 1), (1, 0)]


def test_edge_cases_are_refused_by_the_planner_and_clamped_by_their_mutants():
    from unicompress.conformance.mutants import _clamped
    from unicompress.backend.types import AttentionInfo, TransformerStructure

    shapes = [(32, 32)] * 4 + [(64, 32), (32, 64)]
    nm = CASES_BY_ID["pruning/nm-63-64-refused"]
    assert nm.expects_refusal and nm.checks == ("refused",) and nm.refusal == "stages[0].m"
    bent = _clamped(nm.spec, "clamped_nm", None, shapes)
    assert (bent.n, bent.m) == (31, 32)  # what TensorFlow used to do: 97% sparse
    capped = _clamped(CASES_BY_ID["pruning/nm-63-64-wide-layers"].spec, "capped_nm", None, [(32, 64)])
    assert (capped.n, capped.m) == (32, 64)
    att = AttentionInfo(block=0, query="q", key="k", value="v", output="o", num_heads=4, head_dim=8)
    st = TransformerStructure(hidden_size=32, num_layers=1, attention=(att,))
    assert _clamped(CASES_BY_ID["pruning/head-99-refused"].spec, "clamped_heads", st, shapes).sparsity == 0.75
    block = _clamped(CASES_BY_ID["pruning/block-64x64-refused"].spec, "clamped_block", None, shapes)
    assert tuple(block.block_shape) == (32, 32)


def test_refusal_cases_are_never_probes_of_a_row():
    from unicompress.conformance.contract import probe_unclaimed_row
    from unicompress.conformance.runner import CaseRunner

    case = CASES_BY_ID["pruning/block-64x64-refused"]
    rows = sorted(case.requires - {("pruning", "granularity", "block")})
    runner = CaseRunner(_ClaimsOnly(rows))
    assert runner.missing(case) == [("pruning", "granularity", "block")]
    verdict = probe_unclaimed_row(runner, ("pruning", "granularity", "block"))
    assert case.id not in verdict.cases  # the refusal passes on any backend: it cannot show the row works


def test_refused_check_judges_against_the_core_planner():
    """On a real (numpy) backend: the planner's own refusal passes; a stage that ran, or refused in its own
    words, fails."""
    from numpy_adapter import NumpyAdapter, NumpyMLP

    from unicompress.conformance.runner import Outcome
    from unicompress.specs import PruningSpec

    a, case = NumpyAdapter(), CASES_BY_ID["pruning/block-64x64-refused"]
    model = NumpyMLP()

    def outcome():
        return Outcome(case, a.name, model, a.weights(model), a.layers(model), None)

    o = outcome()
    o.staged = a.copy(model)
    try:
        a.apply(o.staged, case.spec)
    except Exception as exc:  # the core planner refuses inside Adapter.apply
        o.error, o.exception = str(exc), exc
    ok = checks.run_check("refused", a, o)
    assert ok.passed is True and "block_shape" in ok.message, ok.message
    own = outcome()
    own.error, own.exception = "ValueError: block too big", ValueError("block too big")
    bad = checks.run_check("refused", a, own)
    assert bad.passed is False and "refused differently" in bad.message
    ran = outcome()
    ran.model = a.apply(a.copy(model), PruningSpec(granularity="block", sparsity=0.5, block_shape=(2, 2)))
    bad = checks.run_check("refused", a, ran)
    assert bad.passed is False and "the stage ran" in bad.message and "zero" in bad.message, bad.message
    assert checks.run_check("sparsity", a, o).message.startswith("stage failed")  # the gate still holds
