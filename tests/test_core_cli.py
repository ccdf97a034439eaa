"""The `unicompress` command: validate, schema, backends, inspect, bench on real files."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from unicompress.backend import register, unregister
from unicompress.cli import main

from numpy_adapter import NumpyAdapter

GOOD = "name: ok\nbackend: auto\nstages:\n  - technique: pruning\n    sparsity: 0.5\n"
BAD = "stages:\n  - technique: pruning\n    sparsity: 1.5\n    granulrity: n_m\n"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(BAD)
    return tmp_path


def test_validate_reports_each_problem_and_exit_code(files, capsys):
    assert main(["validate", str(files / "good.yaml")]) == 0
    assert "ok (1 stage(s): pruning)" in capsys.readouterr().out
    assert main(["validate", str(files / "good.yaml"), str(files / "bad.yaml")]) == 2
    out = capsys.readouterr().out
    assert "bad.yaml: INVALID" in out and "stages[0].sparsity: got 1.5" in out and "did you mean 'granularity'" in out


def test_validate_against_a_backend_lists_what_it_supports(files, capsys):
    register("numpy-test", NumpyAdapter, replace=True)
    try:
        (files / "nm.yaml").write_text("stages:\n  - {technique: pruning, granularity: n_m, n: 2, m: 4}\n")
        assert main(["validate", str(files / "nm.yaml"), "--backend", "numpy-test"]) == 2
        assert "numpy-test supports: unstructured" in capsys.readouterr().out
        assert main(["backends"]) == 0
        out = capsys.readouterr().out
        assert "numpy-test" in out and "unstructured" in out
    finally:
        unregister("numpy-test")


def test_schema_writes_json(tmp_path):
    assert main(["schema", "-o", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["title"] == "unicompress recipe"


def test_unknown_backend_is_a_clean_error(files, capsys):
    assert main(["run", str(files / "good.yaml"), "--backend", "nope"]) == 2
    assert "no backend named 'nope'" in capsys.readouterr().err


def _matmul_model(path, sparsity: float):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 32)).astype(np.float32)
    w[np.abs(w) < np.quantile(np.abs(w), sparsity)] = 0.0
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 32])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_inspect_and_bench_read_real_onnx_files(tmp_path, capsys):
    dense = _matmul_model(tmp_path / "dense.onnx", 0.0)
    sparse = _matmul_model(tmp_path / "sparse.onnx", 0.5)
    assert main(["inspect", str(sparse)]) == 0
    out = capsys.readouterr().out
    assert "50.0%" in out and "64x32" in out
    assert main(["bench", str(dense), str(sparse), "--batch", "1", "--runs", "3", "--threads", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in rows] == [1, 1] and rows[0]["speedup"] == 1.0 and rows[1]["median_ms"] > 0
