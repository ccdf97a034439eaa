"""`unicompress bench --runtime ...`: the table, the choice, JSON and PNG files, exit codes and refusals (real
ONNX Runtime and OpenVINO on tiny files); without --runtime the command is what it was."""
from __future__ import annotations

import json

import pytest

from unicompress.cli import main
from unicompress.deploy import Runtime, register_runtime, unregister_runtime

import deploy_testutil as tu

pytest.importorskip("openvino")
FAST = ["--batch", "16", "--threads", "1", "--runs", "3", "--warmup", "1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    return d, tu.wide_classifier(d / "fp32.onnx", hidden=1024), tu.narrow_equivalent(d / "narrow.onnx", hidden=1024)


def test_bench_runtime_prints_the_table_and_the_choice(files, capsys):
    d, base, narrow = files
    status = main(["bench", str(base), str(narrow), "--runtime", "onnxruntime,openvino-f32", *FAST,
                   "--json", str(d / "deploy.json"), "--plot", str(d / "deploy.png")])
    out = capsys.readouterr().out
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["file", "runtime", "MB"] and "argmax agree" in lines[0]
    body = [ln for ln in lines[2:6]]
    assert [ln.split()[:2] for ln in body] == [["fp32.onnx", "onnxruntime"], ["fp32.onnx", "openvino-f32"],
                                                ["narrow.onnx", "onnxruntime"], ["narrow.onnx", "openvino-f32"]]
    assert "1.00x" in body[0] and body[0].rstrip().endswith("reference")
    choice = next(ln for ln in lines if ln.startswith("choice: "))
    saved = json.loads((d / "deploy.json").read_text())
    assert choice == "choice: " + saved["choice"]["reason"] and "narrow.onnx" in saved["choice"]["file"]
    assert [r["runtime"] for r in saved["rows"]] == ["onnxruntime", "openvino-f32"] * 2
    assert saved["batch"] == 16 and saved["runs"] == 3 and saved["threads"] == 1
    assert (d / "deploy.png").read_bytes()[:4] == b"\x89PNG"
    assert f"written: {d / 'deploy.json'}" in out and f"written: {d / 'deploy.png'}" in out


def test_bench_runtime_json_on_stdout(files, capsys):
    _, base, narrow = files
    assert main(["bench", str(base), str(narrow), "--runtime", "openvino-f32", *FAST, "--metric", "cosine",
                 "--tolerance", "0.999", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["metric"] == "cosine" and d["tolerance"] == 0.999 and d["reference"]["runtime"] == "onnxruntime"
    assert [(r["runtime"], r["reference"]) for r in d["rows"]] == [
        ("onnxruntime", True), ("openvino-f32", False), ("openvino-f32", False)]
    assert all(r["argmax_agreement"] is None and r["cosine"] > 0.99999 for r in d["rows"])


def test_unknown_runtime_and_usage_errors_fail_before_work(files, capsys):
    d, base, narrow = files
    assert main(["bench", str(base), "--runtime", "onnxruntime,openvnio"]) == 2
    err = capsys.readouterr().err
    assert "no runtime named 'openvnio'; known: " in err and "onnxruntime" in err and "did you mean 'openvino'" in err
    assert main(["bench", str(base), "--runtime", "openvino", "--batch", "1", "32"]) == 2
    assert "one batch size; got --batch 1 32" in capsys.readouterr().err
    assert main(["bench", str(base), "--tolerance", "0.9"]) == 2
    assert "--tolerance needs --runtime" in capsys.readouterr().err
    assert main(["bench", str(base), "--runtime", "openvino", "--json", str(narrow)]) == 2
    assert "--json takes the JSON file to write, not a model" in capsys.readouterr().err
    assert narrow.read_bytes()[:2] != b"{\n"  # the model file was not overwritten
    assert main(["bench", str(base), str(d / "absent.onnx"), "--runtime", "openvino"]) == 2
    assert "no such model file" in capsys.readouterr().err


def test_a_missing_runtime_package_gives_the_pip_command(files, capsys):
    _, base, _ = files
    register_runtime(Runtime("ghost-rt", "unicompress.deploy.ort", imports=("unicompress_no_such_runtime_pkg",),
                             requires=("no-such-runtime==1.0",)))
    try:
        assert main(["bench", str(base), "--runtime", "ghost-rt"]) == 2
    finally:
        unregister_runtime("ghost-rt")
    err = capsys.readouterr().err
    assert "runtime 'ghost-rt' needs packages that are not installed" in err
    assert 'pip install "no-such-runtime==1.0"' in err


def test_a_pair_that_cannot_run_makes_exit_status_1(files, capsys):
    d, base, _ = files
    bad = tu.unknown_op(d / "custom.onnx")
    assert main(["bench", str(base), str(bad), "--runtime", "onnxruntime", *FAST]) == 1
    out = capsys.readouterr().out
    assert "failed: " in out and "not run: onnxruntime on custom.onnx" in out


def test_bench_without_runtime_is_unchanged(files, capsys):
    _, base, narrow = files
    assert main(["bench", str(base), str(narrow), "--batch", "4", "--runs", "2", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "batch", "median", "ms", "p90", "ms", "size", "MB", "speed-up", "smaller"]
    assert [ln.split()[:2] for ln in lines[2:]] == [["fp32.onnx", "4"], ["narrow.onnx", "4"]]
    assert main(["bench", str(base), "--runs", "2", "--threads", "1", "--json"]) == 0
    assert [r["batch"] for r in json.loads(capsys.readouterr().out)] == [1, 32]  # the default batches


def test_bench_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--runtime onnxruntime,openvino --batch 32 --runs 15" in out and "openvino-f32" in out
    assert "--json deploy.json --plot deploy.png" in out and "Exit status: 0; 1 when some pair" in out


def test_bench_vocab_bounds_the_synthetic_token_ids(tmp_path, capsys):
    small = tu.token_encoder(tmp_path / "small.onnx", vocab=50)
    assert main(["bench", str(small), "--runtime", "openvino-f32", *FAST]) == 2
    assert "(bench --vocab N)" in capsys.readouterr().err
    assert main(["bench", str(small), "--runtime", "openvino-f32", *FAST, "--vocab", "50", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["runtime"] for r in rows] == ["onnxruntime", "openvino-f32"] and rows[1]["max_abs"] < 1e-4
