"""unicompress.deploy runtimes: ONNX Runtime and OpenVINO (real) load the same tiny files and agree; the
registry refuses unknown names and names the pip command of a missing package; adapters can add runtimes."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from unicompress.bench import synthetic_inputs
from unicompress.deploy import (MissingRuntimeError, Runtime, RuntimeNotFoundError, compare_runtimes, get_runtime,
                                known_runtimes, register_runtime, resolve_runtimes, unregister_runtime)
from unicompress.onnx.runtime import feeds_for

import deploy_testutil as tu

pytest.importorskip("openvino")


def test_builtin_runtimes_are_data_until_loaded():
    assert {"onnxruntime", "openvino", "openvino-f32", "tflite", "paddle-inference"} <= set(known_runtimes())
    assert get_runtime("tflite").reads == (".tflite",) and get_runtime("paddle-inference").reads_file("model.json")
    ov = get_runtime("openvino")
    assert ov.available() and ov.reads == (".onnx", ".xml") and ov.reads_file("m.XML") and not ov.reads_file("m.tflite")
    assert get_runtime("openvino-f32").options == {"precision": "f32"}
    assert ov.install_hint() == 'pip install "openvino==2026.4.1"'
    assert ov.version().startswith("2026.4")


def test_both_runtimes_give_the_same_outputs_for_the_same_feeds(tmp_path):
    wide = tu.wide_classifier(tmp_path / "wide.onnx", hidden=256)
    tok = tu.token_encoder(tmp_path / "tok.onnx")
    for path in (wide, tok):
        ort_model = get_runtime("onnxruntime").load(path, threads=1)
        ov_model = get_runtime("openvino-f32").load(path, threads=1)
        assert [s.name for s in ov_model.get_inputs()] == [s.name for s in ort_model.get_inputs()]
        assert [s.type for s in ov_model.get_inputs()] == [s.type for s in ort_model.get_inputs()]
        assert ov_model.output_names() == ort_model.output_names()
        feeds = synthetic_inputs(ort_model, 4, 12)
        a, = ort_model.run(feeds_for(ort_model, feeds))
        b, = ov_model.run(feeds_for(ov_model, feeds))
        assert a.shape == b.shape == ((4, tu.CLASSES) if path == wide else (4, 16))
        assert float(np.abs(a - b).max()) < 1e-4
    assert "inference precision f32" in ov_model.detail


def test_openvino_ir_is_written_whole_and_runs_like_the_onnx_file(tmp_path):
    from unicompress.deploy.openvino_rt import save_ir

    tok = tu.token_encoder(tmp_path / "tok.onnx")
    xml = save_ir(tok, tmp_path / "tok.openvino")
    assert xml == tmp_path / "tok.openvino" / "tok.xml" and xml.with_suffix(".bin").stat().st_size > 60_000
    again = save_ir(tok, tmp_path / "tok.openvino")  # replaces the folder whole, no leftovers beside it
    assert sorted(p.name for p in again.parent.iterdir()) == ["tok.bin", "tok.xml"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    table = compare_runtimes([tok, xml], ["onnxruntime", "openvino-f32"], batch=3, length=10, threads=1, runs=2,
                             warmup=1)
    labels = [(r.runtime, r.file.rsplit("/", 1)[-1]) for r in table.rows]
    assert labels == [("onnxruntime", "tok.onnx"), ("openvino-f32", "tok.onnx"), ("openvino-f32", "tok.xml")]
    assert table.notes == ["onnxruntime does not read .xml files: tok.xml left out for it"]
    ir = table.rows[2]
    assert ir.error is None and ir.max_abs < 1e-4 and ir.cosine > 0.99999 and table.metric == "cosine"
    assert ir.size_mb == pytest.approx((xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 1e6)


def test_unknown_runtimes_are_refused_by_name_listing_the_known_ones():
    with pytest.raises(RuntimeNotFoundError) as err:
        resolve_runtimes("onnxruntime,openvnio,tensorrt-x")
    msg = str(err.value)
    assert "'openvnio', 'tensorrt-x'" in msg and "known: " in msg and "onnxruntime, openvino" in msg
    assert "did you mean 'openvino'" in msg


def test_a_runtime_whose_package_is_missing_names_the_pip_command(tmp_path):
    # a registry entry whose framework module is absent: what a user without openvino meets
    ghost = Runtime("ghost-rt", "unicompress.deploy.ort", imports=("unicompress_no_such_runtime_pkg",),
                    requires=("no-such-runtime==1.0",))
    register_runtime(ghost)
    try:
        assert not get_runtime("ghost-rt").available()
        with pytest.raises(MissingRuntimeError) as err:
            resolve_runtimes(["onnxruntime", "ghost-rt"])
        assert 'pip install "no-such-runtime==1.0"' in str(err.value) and "runtime 'ghost-rt'" in str(err.value)
        wide = tu.wide_classifier(tmp_path / "wide.onnx", hidden=64)
        with pytest.raises(MissingRuntimeError):  # before any file is loaded
            compare_runtimes([wide], ["ghost-rt"], batch=2, runs=1)
        with pytest.raises(ValueError, match="already registered"):
            register_runtime(ghost)
    finally:
        unregister_runtime("ghost-rt")
    assert "ghost-rt" not in known_runtimes()


def test_an_adapter_runtime_joins_the_table(tmp_path):
    # onnx's ReferenceEvaluator, registered from outside the core like an adapter's native runtime
    register_runtime(Runtime("onnx-reference", "deploy_testutil", imports=("onnx",), requires=("onnx",),
                             reads=(".onnx",)))
    try:
        tok = tu.token_encoder(tmp_path / "tok.onnx")
        table = compare_runtimes([tok], "onnx-reference", batch=2, length=6, threads=1, runs=2, warmup=1)
    finally:
        unregister_runtime("onnx-reference")
    ref, other = table.rows
    assert (ref.runtime, ref.reference, other.runtime) == ("onnxruntime", True, "onnx-reference")
    assert other.version == __import__("onnx").__version__ and other.max_abs < 1e-4


def test_deploy_imports_no_runtime():
    code = ("import sys, unicompress.deploy, unicompress.cli\n"
            "from unicompress.deploy import resolve_runtimes\n"
            "resolve_runtimes('onnxruntime,openvino')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'openvino', 'onnx')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_pairs_are_timed_in_interleaved_rounds_after_their_warm_ups():
    from unicompress.bench import interleaved_times

    calls: list[str] = []
    times = interleaved_times([lambda: calls.append("a"), lambda: calls.append("b")], runs=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert [len(t) for t in times] == [3, 3] and all(ms >= 0 for t in times for ms in t)


def test_file_size_counts_external_data(tmp_path):
    import onnx

    from unicompress.deploy.compare import _size_mb

    wide = tu.wide_classifier(tmp_path / "wide.onnx", hidden=512)
    inline = _size_mb(wide)
    model = onnx.load(str(wide))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="weights.bin",
              size_threshold=0)
    assert (tmp_path / "ext.onnx").stat().st_size < 1000
    assert _size_mb(tmp_path / "ext.onnx") == pytest.approx(inline, rel=0.02)
    table = compare_runtimes([wide, tmp_path / "ext.onnx"], "onnxruntime", batch=2, threads=1, runs=1, warmup=0)
    assert table.rows[1].max_abs == 0.0 and table.rows[1].size_mb == pytest.approx(inline, rel=0.02)


def test_a_reference_that_cannot_run_on_the_synthetic_tokens_says_how_to_fix_it(tmp_path):
    from unicompress.deploy.compare import DeployError

    small = tu.token_encoder(tmp_path / "small.onnx", vocab=50)
    with pytest.raises(DeployError) as err:
        compare_runtimes([small], "openvino-f32", batch=2, length=8, threads=1, runs=1)
    msg = str(err.value)
    assert msg.startswith("the reference pair onnxruntime on small.onnx could not run: ") and "vocab=1000" in msg
    table = compare_runtimes([small], "openvino-f32", batch=2, length=8, threads=1, runs=1, vocab=50)
    assert table.rows[1].max_abs < 1e-4
