"""compare_runtimes times every (file, runtime) pair in one run against the reference pair, and choose()
picks the fastest pair that keeps agreement — real ONNX Runtime and OpenVINO on tiny files whose speed and
answers are known by construction (a wide FP32 baseline, an 8x cheaper exact equivalent, a free wrong one)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unicompress.deploy import choose, compare_runtimes, deploy_report

import deploy_testutil as tu

pytest.importorskip("openvino")
RUNTIMES = ["onnxruntime", "openvino-f32"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("deploy")
    return (tu.wide_classifier(d / "fp32.onnx"), tu.narrow_equivalent(d / "narrow.onnx"),
            tu.sliced_wrong(d / "wrong.onnx"))


@pytest.fixture(scope="module")
def table(files):
    return compare_runtimes(files, RUNTIMES, batch=64, threads=1, runs=7, warmup=2)


def _row(table, name, runtime):
    return next(r for r in table.rows if Path(r.file).name == name and r.runtime == runtime)


def test_ratios_and_agreement_are_against_the_reference_pair(table):
    assert [(Path(r.file).name, r.runtime) for r in table.rows] == [
        ("fp32.onnx", "onnxruntime"), ("fp32.onnx", "openvino-f32"), ("narrow.onnx", "onnxruntime"),
        ("narrow.onnx", "openvino-f32"), ("wrong.onnx", "onnxruntime"), ("wrong.onnx", "openvino-f32")]
    ref = table.reference
    assert ref is table.rows[0] and ref.reference and ref.speedup == 1.0 and ref.max_abs == 0.0
    assert table.metric == "argmax" and ref.argmax_agreement == 1.0 and table.batch == 64 and table.runs == 7
    for r in table.rows:
        assert r.error is None and 0 < r.median_ms <= r.p90_ms
        assert r.speedup == pytest.approx(ref.median_ms / r.median_ms, rel=1e-12)
    # the same function on another runtime / through a narrower layer agrees; the sliced one does not
    for name, runtime in [("fp32.onnx", "openvino-f32"), ("narrow.onnx", "onnxruntime"),
                          ("narrow.onnx", "openvino-f32")]:
        r = _row(table, name, runtime)
        assert r.max_abs < 1e-4 and r.argmax_agreement == 1.0 and r.cosine > 0.99999
    wrong = _row(table, "wrong.onnx", "onnxruntime")
    assert wrong.argmax_agreement < 0.5 and wrong.agreement == wrong.argmax_agreement and wrong.max_abs > 0.5
    # 32x8192x8 MatMuls against 32x512x8 ones (16x fewer FLOPs) and a Slice: the construction fixes the speed order
    assert _row(table, "narrow.onnx", "onnxruntime").speedup > 2.0
    assert _row(table, "wrong.onnx", "onnxruntime").median_ms < _row(table, "narrow.onnx", "onnxruntime").median_ms


def test_choose_skips_the_fastest_pair_when_it_breaks_the_tolerance(table):
    c = choose(table, 0.99)
    assert Path(c.row.file).name == "narrow.onnx" and c.row.argmax_agreement == 1.0
    best_narrow = max((r for r in table.rows if Path(r.file).name == "narrow.onnx"), key=lambda r: r.speedup)
    assert c.row is best_narrow
    other = next(r for r in table.rows if Path(r.file).name == "narrow.onnx" and r is not c.row)
    assert c.reason.startswith(f"{c.row.runtime} on narrow.onnx: {c.row.speedup:.2f}x vs onnxruntime on fp32.onnx, "
                               "argmax agreement 100.0% >= 99.0%")
    assert f"faster than {other.runtime} on the same file ({c.row.speedup / other.speedup:.2f}x)" in c.reason
    assert "faster but rejected:" in c.reason and "wrong.onnx" in c.reason and "points short" in c.reason
    assert {Path(r.file).name for r in c.rejected} == {"wrong.onnx"}
    assert table.choose(0.99).row is c.row  # the method is the function


def test_choose_by_the_rule_on_a_lenient_and_an_impossible_tolerance(table):
    lenient = choose(table, 0.0)  # every pair keeps it: the fastest of all wins
    assert lenient.row is max(table.rows, key=lambda r: r.speedup)
    assert Path(lenient.row.file).name == "wrong.onnx" and not lenient.rejected
    strict = choose(table, 1.01)  # nothing but the reference can be chosen, and it says why, with the gaps
    assert strict.row is table.reference
    assert strict.reason.startswith("onnxruntime on fp32.onnx (the reference): no other pair keeps argmax "
                                    "agreement >= 101.0%")
    assert "narrow.onnx (" in strict.reason and "1.0 points short" in strict.reason
    assert len(strict.rejected) == 5


def test_table_renders_as_markdown_json_and_a_plot(table, tmp_path):
    md = table.to_markdown()
    lines = md.splitlines()
    assert lines[0].startswith(r"| file | runtime | MB | median ms | p90 ms | speed-up | max \|diff\| | cosine |")
    assert len([ln for ln in lines if ln.startswith("| ")]) == 7 and "| reference |" in lines[2]
    assert "ratios and agreement against onnxruntime on fp32.onnx" in md and "inference precision f32" in md
    d = json.loads(json.dumps(table.to_dict()))
    assert d["metric"] == "argmax" and d["tolerance"] == 0.99 and len(d["rows"]) == 6
    assert d["choice"]["reason"] == choose(table).reason and d["reference"]["runtime"] == "onnxruntime"
    png = table.plot(tmp_path / "deploy.png")
    assert png == tmp_path / "deploy.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_pair_that_cannot_load_is_a_row_with_its_error(files, tmp_path):
    bad = tu.unknown_op(tmp_path / "custom.onnx")
    table = compare_runtimes([files[0], bad], RUNTIMES, batch=4, threads=1, runs=2, warmup=1)
    broken = [r for r in table.rows if r.error]
    assert [Path(r.file).name for r in broken] == ["custom.onnx", "custom.onnx"]
    assert all(r.speedup is None and r.agreement is None for r in broken)
    assert "NoSuchOp" in broken[0].error
    c = choose(table, 0.99)
    assert Path(c.row.file).name == "fp32.onnx" and "not run: onnxruntime on custom.onnx: could not run" in c.reason


def test_deploy_report_is_the_recipe_entry_point(files):
    base, narrow, _ = files
    x = np.random.default_rng(3).normal(size=(16, tu.WIDTH)).astype(np.float32)
    table = deploy_report(narrow, base, ["openvino-f32"], threads=1, runs=2, inputs={"x": x}, metric="cosine")
    assert [(Path(r.file).name, r.runtime) for r in table.rows] == [
        ("fp32.onnx", "onnxruntime"), ("fp32.onnx", "openvino-f32"), ("narrow.onnx", "openvino-f32")]
    assert table.inputs == "given" and table.batch == 16 and table.metric == "cosine"
    assert table.rows[2].cosine > 0.99999 and table.rows[2].argmax_agreement is None
    alone = deploy_report(narrow, None, "onnxruntime", threads=1, runs=2, batch=2)
    assert len(alone.rows) == 1 and alone.reference.file == str(narrow)
    assert choose(alone).reason == "onnxruntime on narrow.onnx (the reference): no other pair ran"
