"""The core QDQ rewriter (unicompress.onnx.qdq) on small hand-built ONNX graphs run in ONNX Runtime:
weights become integers + DequantizeLinear, static inputs QuantizeLinear/DequantizeLinear, dynamic layers
the integer MatMul; layers are found by value in the orientation their node multiplies by."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from unicompress.backend.types import QuantizedTensor  # noqa: E402
from unicompress.onnx.qdq import (ActivationQuant, QDQLayer, WeightRef, container_dtype, insert_qdq,  # noqa: E402
                                  match_weights)
from unicompress.reference.quantization import quantize_weight  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.standard_normal((5, 8)).astype(np.float32)


def _qt(w: np.ndarray, bits: int = 8, symmetric: bool = True, per_channel: bool = True) -> QuantizedTensor:
    """Reference integers of a float [out, in] weight (per channel along axis 0)."""
    r = quantize_weight(w.astype(np.float64), bits=bits, symmetric=symmetric, per_channel=per_channel)
    scale, zp = np.asarray(r.scale), np.asarray(r.zero_point)
    if per_channel:
        scale, zp = scale.reshape(-1), zp.reshape(-1)
    return QuantizedTensor(q=np.asarray(r.q, np.int64), scale=scale, zero_point=zp.astype(np.int64),
                           bits=bits, axis=0 if per_channel else None)


def _graph(weights: dict[str, np.ndarray], ops: list[tuple[str, str, str, dict]], opset: int = 17):
    """x [5, 8] -> nodes (op, input, weight initializer, attrs) chained -> y. Weights are stored as given."""
    nodes, prev = [], "x"
    for i, (op, src, init, attrs) in enumerate(ops):
        out = "y" if i == len(ops) - 1 else f"h{i}"
        inputs = [prev if src == "prev" else src, init] + (attrs.pop("bias", []))
        nodes.append(helper.make_node(op, inputs, [out], name=f"n{i}", **attrs))
        prev = out
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(proto) -> np.ndarray:
    """ORT outputs without graph optimizations: the graph's own arithmetic (ORT's fusions, e.g. DQ -> MatMul
    into MatMulNBits with int8 compute, would change the numbers these tests derive by hand)."""
    onnx.checker.check_model(proto)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": X})[0]


def _ops(proto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def test_weight_only_matmul_per_channel_stores_the_integers():
    w = RNG.standard_normal((6, 8))  # [out, in]
    t = _qt(w)
    wd = t.dequantize().astype(np.float32)
    proto = _graph({"W": wd.T}, [("MatMul", "prev", "W", {})])  # MatMul reads [in, out]
    refs = match_weights(proto, {"fc": wd})
    assert refs == {"fc": WeightRef("W", True)}
    assert insert_qdq(proto, {"fc": QDQLayer(t, refs["fc"])}) == 1
    assert _ops(proto) == ["DequantizeLinear", "MatMul"]
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert "W" not in inits
    assert inits["fc.weight_quantized"].dtype == np.int8
    np.testing.assert_array_equal(inits["fc.weight_quantized"], t.q.T)
    dq = proto.graph.node[0]
    assert [a.i for a in dq.attribute if a.name == "axis"] == [1]  # output channels of [in, out]
    np.testing.assert_allclose(_run(proto), X @ wd.T, rtol=0, atol=1e-5)


def test_asymmetric_per_tensor_gemm_transb_uses_uint8_and_no_axis():
    w = RNG.standard_normal((6, 8))
    t = _qt(w, symmetric=False, per_channel=False)
    wd = t.dequantize().astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    proto = _graph({"W": wd, "B": b}, [("Gemm", "prev", "W", {"transB": 1, "bias": ["B"]})])
    refs = match_weights(proto, {"fc": wd})
    assert refs["fc"] == WeightRef("W", False)
    insert_qdq(proto, {"fc": QDQLayer(t, refs["fc"])})
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert container_dtype(t) is np.uint8 and inits["fc.weight_quantized"].dtype == np.uint8
    assert inits["fc.weight_scale"].shape == () and inits["fc.weight_zero_point"].shape == ()
    assert not [a for a in proto.graph.node[0].attribute if a.name == "axis"]
    np.testing.assert_allclose(_run(proto), X @ wd.T + b, rtol=0, atol=1e-5)


def test_a_square_weight_is_matched_only_in_the_orientation_its_node_multiplies_by():
    w = RNG.standard_normal((8, 8))
    t = _qt(w)
    wd = t.dequantize().astype(np.float32)
    # n0 computes x @ W (not the layer's x @ W.T); n1 is the layer
    proto = _graph({"A": wd, "W": wd.T.copy()}, [("MatMul", "prev", "A", {}), ("MatMul", "prev", "W", {})])
    assert match_weights(proto, {"fc": wd}) == {"fc": WeightRef("W", True)}


def test_tolerance_matching_and_identical_layers_take_distinct_initializers():
    w = RNG.standard_normal((8, 8))
    t = _qt(w)
    wd = t.dequantize().astype(np.float32)
    noisy = wd.T + np.float32(4e-7)  # an exporter that recomputed the dequantized values
    proto = _graph({"W1": noisy, "W2": noisy.copy()}, [("MatMul", "prev", "W1", {}), ("MatMul", "prev", "W2", {})])
    assert match_weights(proto, {"a": wd, "b": wd}) == {}
    refs = match_weights(proto, {"a": wd, "b": wd}, atol=1e-6)
    assert refs == {"a": WeightRef("W1", True), "b": WeightRef("W2", True)}


def test_static_inputs_share_one_quantize_and_get_one_dequantize_per_matmul():
    wa, wb = RNG.standard_normal((8, 8)), RNG.standard_normal((8, 8))
    ta, tb = _qt(wa), _qt(wb)
    da, db = ta.dequantize().astype(np.float32), tb.dequantize().astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "A"], ["ya"], name="a"),
             helper.make_node("MatMul", ["x", "B"], ["yb"], name="b"),
             helper.make_node("Add", ["ya", "yb"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
                              [numpy_helper.from_array(da.T.copy(), "A"), numpy_helper.from_array(db.T.copy(), "B")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    scale, zp = float(np.abs(X).max() / 127), 0
    act = ActivationQuant(scale, zp, signed=True)
    refs = match_weights(proto, {"a": da, "b": db})
    insert_qdq(proto, {n: QDQLayer(t, refs[n], act) for n, t in (("a", ta), ("b", tb))})
    ops = _ops(proto)
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 4
    xq = np.clip(np.round(X / np.float32(scale)), -128, 127) * np.float32(scale)
    np.testing.assert_allclose(_run(proto), xq @ da.T + xq @ db.T, rtol=0, atol=1e-4)
    # with its optimizations ORT fuses the pattern into integer kernels: same result within a step
    fused = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    assert np.abs(fused - (xq @ da.T + xq @ db.T)).max() < 0.05


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_dynamic_layers_become_matmulinteger(op):
    w = RNG.standard_normal((6, 8))
    t = _qt(w)
    wd = t.dequantize().astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    if op == "MatMul":
        proto = _graph({"W": wd.T.copy()}, [("MatMul", "prev", "W", {})])
        want = X @ wd.T
    else:
        proto = _graph({"W": wd, "B": b}, [("Gemm", "prev", "W", {"transB": 1, "bias": ["B"]})])
        want = X @ wd.T + b
    refs = match_weights(proto, {"fc": wd})
    insert_qdq(proto, {"fc": QDQLayer(t, refs["fc"], dynamic=True)})
    ops = _ops(proto)
    assert ops[:5] == ["DynamicQuantizeLinear", "MatMulInteger", "Mul", "Cast", "Mul"]
    assert "Gemm" not in ops and "DequantizeLinear" not in ops
    inits = {i.name for i in proto.graph.initializer}
    assert "W" not in inits and ("fc.weight_quantized" in inits) == (op == "MatMul")  # Gemm takes the [in, out] copy
    # reference: x quantized to uint8 on its own range, integer product, both scales
    lo, hi = min(X.min(), 0), max(X.max(), 0)
    xs = np.float32((hi - lo) / 255)
    xz = np.clip(np.round(-lo / xs), 0, 255)
    xq = np.clip(np.round(X / xs) + xz, 0, 255)
    ref = ((xq - xz) @ t.q.T.astype(np.float64)) * xs * np.asarray(t.scale)[None, :] + (b if op == "Gemm" else 0)
    got = _run(proto)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    assert np.abs(got - want).max() < 0.1  # and close to the float layer


def test_bit_widths_and_opset_rules():
    w = RNG.standard_normal((6, 8))
    t4 = _qt(w, bits=4)
    assert container_dtype(t4) is np.int8 and np.abs(t4.q).max() <= 7  # 4-bit values in an int8 container
    t16 = _qt(w, bits=16)
    assert container_dtype(t16) is np.int32
    d16 = t16.dequantize().astype(np.float32)
    proto = _graph({"W": d16.T.copy()}, [("MatMul", "prev", "W", {})])
    insert_qdq(proto, {"fc": QDQLayer(t16, match_weights(proto, {"fc": d16})["fc"])})
    np.testing.assert_allclose(_run(proto), X @ d16.T, rtol=0, atol=1e-5)
    # per-axis DequantizeLinear needs opset 13; per-tensor works at opset 12
    d4 = t4.dequantize().astype(np.float32)
    old = _graph({"W": d4.T.copy()}, [("MatMul", "prev", "W", {})], opset=12)
    with pytest.raises(ValueError, match="opset >= 13"):
        insert_qdq(old, {"fc": QDQLayer(t4, WeightRef("W", True))})
    tp = _qt(w, per_channel=False)
    dp = tp.dequantize().astype(np.float32)
    old = _graph({"W": dp.T.copy()}, [("MatMul", "prev", "W", {})], opset=12)
    insert_qdq(old, {"fc": QDQLayer(tp, WeightRef("W", True))})
    np.testing.assert_allclose(_run(old), X @ dp.T, rtol=0, atol=1e-5)


def test_refusals_name_the_layer():
    w = RNG.standard_normal((6, 8))
    t = _qt(w)
    proto = _graph({"W": t.dequantize().T.astype(np.float32)}, [("MatMul", "prev", "W", {})])
    log = QuantizedTensor(q=t.q, scale=t.scale, zero_point=t.zero_point, bits=8, axis=0, mapping="log",
                          sign=np.sign(w).astype(np.int8))
    with pytest.raises(ValueError, match="fc: log-mapped"):
        insert_qdq(proto, {"fc": QDQLayer(log, WeightRef("W", True))})
    with pytest.raises(ValueError, match="fc: ONNX weight W has shape"):
        insert_qdq(proto, {"fc": QDQLayer(t, WeightRef("W", False))})
    with pytest.raises(ValueError, match="no initializer 'nope'"):
        insert_qdq(proto, {"fc": QDQLayer(t, WeightRef("nope", True))})
    before = proto.SerializeToString()  # a refusal of any layer leaves the graph untouched
    with pytest.raises(ValueError, match="bad: MatMulInteger takes 8-bit"):
        insert_qdq(proto, {"fc": QDQLayer(t, WeightRef("W", True)),
                           "bad": QDQLayer(_qt(w, bits=12), WeightRef("W", True), dynamic=True)})
    assert proto.SerializeToString() == before
