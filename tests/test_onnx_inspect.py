"""unicompress.onnx: graph inspection (sparsity, bit widths, QDQ axis, factorised MatMuls) and ORT runs,
on small graphs built here with onnx.helper (no framework needed)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from unicompress.onnx import (check_model, compare_outputs, factorised_matmuls, initializers, is_quantized,
                              qdq_nodes, run_onnx, summarize)


def _model(nodes, inits, inputs=(("x", [None, 8]),), outputs=(("logits", [None, 4]),)):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _save(model, tmp_path, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_sparsity_and_bits_per_initializer(tmp_path):
    w = np.arange(1, 33, dtype=np.float32).reshape(8, 4)
    w[::2] = 0  # half the rows zero: 16 zeros
    m = _model([helper.make_node("MatMul", ["x", "w"], ["logits"])], {"w": w})
    path = _save(m, tmp_path)
    check_model(path)
    info = {i.name: i for i in initializers(path)}
    assert info["w"].zeros == 16 and info["w"].sparsity == 0.5 and info["w"].bits == 32
    s = summarize(path)
    assert s.zeros_in_weights == 16 and s.inputs == ["x"] and s.outputs == ["logits"]
    assert s.op_counts == {"MatMul": 1} and not s.quantized and s.file_bytes > 0


def test_qdq_nodes_report_axis_and_integer_type(tmp_path):
    wq = np.random.default_rng(0).integers(-127, 128, (4, 8)).astype(np.int8)  # [out, in] as torch exports
    scale = np.linspace(0.01, 0.04, 4).astype(np.float32)
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wf"], axis=0),
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"]),
        helper.make_node("Gemm", ["xf", "wf"], ["logits"], transB=1),
    ]
    inits = {"wq": wq, "ws": scale, "wz": np.zeros(4, np.int8), "xs": np.array(0.02, np.float32),
             "xz": np.array(128, np.uint8)}
    path = _save(_model(nodes, inits), tmp_path)
    check_model(path)
    qdq = qdq_nodes(path)
    weight = next(q for q in qdq if q.input == "wq")
    act = next(q for q in qdq if q.op == "QuantizeLinear")
    assert weight.axis == 0 and weight.per_channel and weight.zero_point_dtype == "INT8"
    assert act.axis is None and not act.per_channel and act.zero_point_dtype == "UINT8"
    assert is_quantized(path) and summarize(path).quantized
    assert {i.name: i.bits for i in initializers(path)}["wq"] == 8


def test_factorised_matmuls_found_through_a_bias_add(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h"]), helper.make_node("Add", ["h", "bias"], ["hb"]),
             helper.make_node("MatMul", ["hb", "b"], ["logits"])]
    m = _model(nodes, {"a": a, "b": b, "bias": np.zeros(3, np.float32)})
    pairs = factorised_matmuls(m)
    assert len(pairs) == 1 and (pairs[0].in_features, pairs[0].rank, pairs[0].out_features) == (8, 3, 4)


def test_a_wide_ffn_pair_with_an_activation_is_not_factorised(tmp_path):
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "b"], ["logits"])]
    m = _model(nodes, {"a": rng.normal(size=(8, 3)).astype(np.float32),
                       "b": rng.normal(size=(3, 4)).astype(np.float32)})
    assert factorised_matmuls(m) == []


def test_run_onnx_matches_numpy_and_casts_inputs(tmp_path):
    rng = np.random.default_rng(3)
    w = rng.normal(size=(8, 4)).astype(np.float32)
    path = _save(_model([helper.make_node("MatMul", ["x", "w"], ["logits"])], {"w": w}), tmp_path)
    x = rng.normal(size=(5, 8))  # float64: cast to the declared float32
    y = run_onnx(path, {"x": x, "unused": np.zeros(1)}, threads=1)
    cmp = compare_outputs(y, x.astype(np.float32) @ w, atol=1e-5)
    assert cmp.ok and cmp.max_abs < 1e-5 and cmp.argmax_agreement == 1.0
    with pytest.raises(KeyError, match="needs input 'x'"):
        run_onnx(path, {"y": x})


def test_compare_outputs_flags_drift_and_shape_mismatch():
    e = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert not compare_outputs(e + 0.01, e, atol=1e-4, rtol=0).ok
    assert compare_outputs(e + 0.01, e, atol=0.02, rtol=0).ok
    bad = compare_outputs(e[:1], e)
    assert not bad.ok and bad.max_abs == float("inf")
    assert not compare_outputs(np.full_like(e, np.nan), e).ok


def test_check_model_rejects_a_broken_graph(tmp_path):
    m = _model([helper.make_node("MatMul", ["x", "missing"], ["logits"])], {})
    with pytest.raises(onnx.checker.ValidationError):
        check_model(m)


def test_latencies_of_several_files_are_timed_in_turn(tmp_path):
    from unicompress.bench import compare_latency, measure_latencies

    small = _save(_model([helper.make_node("MatMul", ["x", "w"], ["logits"])], {"w": np.ones((8, 4), np.float32)}),
                  tmp_path, "small.onnx")
    wide = _save(_model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "v"], ["logits"])],
                        {"w": np.ones((8, 512), np.float32), "v": np.ones((512, 4), np.float32)}), tmp_path, "wide.onnx")
    a, b = measure_latencies([small, wide], batch=64, runs=5, threads=1)
    assert (a.path, b.path) == (str(small), str(wide)) and a.runs == b.runs == 5 and a.batch == 64
    assert 0 < a.median_ms <= a.p90_ms and 0 < b.median_ms <= b.p90_ms
    rows = compare_latency(small, [wide], batches=(1,), runs=3, threads=1)
    assert [r["speedup"] for r in rows][0] == 1.0 and rows[1]["speedup"] == rows[0]["median_ms"] / rows[1]["median_ms"]
