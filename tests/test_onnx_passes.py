"""The core's ONNX graph passes (unicompress.onnx.passes) on hand-built graphs in the exact shapes the exporters
write, run in ONNX Runtime before and after: same outputs, the pattern gone, ORT's fusions reached."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from unicompress.onnx import passes  # noqa: E402


def _model(nodes, inits, inputs, outputs, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(proto, feeds, path, optimized=None):
    onnx.save(proto, str(path))
    options = ort.SessionOptions()
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _unfused_layer_norm(eps=1e-12, hidden=8):
    """tf2onnx's LayerNorm: mean = GAP(x); d = x - mean; var = GAP(d * d); r = 1 / sqrt(var + eps);
    m = r * gamma; y = x * m + (beta - mean * m)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(eps, np.float32), "eps"),
             numpy_helper.from_array(rng.normal(size=hidden).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.normal(size=hidden).astype(np.float32), "beta")]
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["mean"]),
             helper.make_node("Sub", ["x", "mean"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["sq"]),
             helper.make_node("GlobalAveragePool", ["sq"], ["var"]),
             helper.make_node("Add", ["var", "eps"], ["var_eps"]),
             helper.make_node("Sqrt", ["var_eps"], ["std"]),
             helper.make_node("Reciprocal", ["std"], ["r"]),
             helper.make_node("Mul", ["r", "gamma"], ["m"]),
             helper.make_node("Mul", ["x", "m"], ["xm"]),
             helper.make_node("Mul", ["mean", "m"], ["mean_m"]),
             helper.make_node("Sub", ["beta", "mean_m"], ["shift"]),
             helper.make_node("Add", ["xm", "shift"], ["y"])]
    return nodes, inits


def test_fuse_layer_norms_replaces_the_eleven_node_pattern_by_one_layer_normalization(tmp_path):
    # GlobalAveragePool averages every axis after the first two: with x [N, C, 1, hidden] it is the mean over
    # `hidden` per (N, C), i.e. a LayerNorm over the last axis, which is what the fused node computes
    hidden = 8
    nodes, inits = _unfused_layer_norm(hidden=hidden)
    proto = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 1, hidden])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 1, hidden])])
    x = {"x": np.random.default_rng(1).normal(size=(2, 3, 1, hidden)).astype(np.float32)}
    before = _run(proto, x, tmp_path / "before.onnx")
    assert passes.fuse_layer_norms(proto) == 1
    onnx.checker.check_model(proto, full_check=True)
    assert [n.op_type for n in proto.graph.node] == ["LayerNormalization"]
    assert {t.name for t in proto.graph.initializer} == {"gamma", "beta"}  # eps folded into the attribute
    ln = proto.graph.node[0]
    assert helper.get_attribute_value(next(a for a in ln.attribute if a.name == "epsilon")) == pytest.approx(1e-12)
    np.testing.assert_allclose(_run(proto, x, tmp_path / "after.onnx"), before, atol=1e-5)
    assert passes.fuse_layer_norms(proto) == 0  # nothing left to fuse


def test_fuse_layer_norms_needs_opset_17():
    nodes, inits = _unfused_layer_norm()
    proto = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 1, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 1, 8])], opset=16)
    assert passes.fuse_layer_norms(proto) == 0 and len(proto.graph.node) == 12


def test_canonical_gelu_rewrites_the_erfc_form_into_the_order_ort_fuses(tmp_path):
    """0.5 x erfc(-x/sqrt2) as tf2onnx writes it (Neg, Mul, Erf, Sub(1, .), Mul(0.5), Mul) -> Div, Erf, Add, Mul,
    Mul, which ORT's optimizer turns into one Gelu."""
    inits = [numpy_helper.from_array(np.array(1 / np.sqrt(2), np.float32), "inv_sqrt2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("Neg", ["x"], ["neg"]),
             helper.make_node("Mul", ["neg", "inv_sqrt2"], ["scaled"]),
             helper.make_node("Erf", ["scaled"], ["erf"]),
             helper.make_node("Sub", ["one", "erf"], ["erfc"]),
             helper.make_node("Mul", ["x", "half"], ["half_x"]),
             helper.make_node("Mul", ["half_x", "erfc"], ["y"])]
    proto = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])])
    x = {"x": np.linspace(-3, 3, 10, dtype=np.float32).reshape(2, 5)}
    before = _run(proto, x, tmp_path / "before.onnx")
    assert passes.canonical_gelu(proto) == 1
    onnx.checker.check_model(proto, full_check=True)
    assert [n.op_type for n in proto.graph.node] == ["Div", "Erf", "Add", "Mul", "Mul"]
    after = _run(proto, x, tmp_path / "after.onnx", optimized=tmp_path / "optimized.onnx")
    np.testing.assert_allclose(after, before, atol=1e-6)
    assert [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node] == ["Gelu"]


def test_fold_constant_shapes_turns_a_reshaped_constant_kernel_into_one_initializer(tmp_path):
    """A 3-D kernel reshaped at run time through Shape -> Gather -> Concat -> Reshape (tf2onnx's einsum
    kernels): folded, the MatMul reads a 2-D initializer; QDQ nodes are never folded."""
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 2, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(kernel, "kernel"), numpy_helper.from_array(np.array([0], np.int64), "i0"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    nodes = [helper.make_node("Shape", ["kernel"], ["kshape"]),
             helper.make_node("Gather", ["kshape", "i0"], ["rows"], axis=0),
             helper.make_node("Concat", ["rows", "minus1"], ["flat"], axis=0),
             helper.make_node("Reshape", ["kernel", "flat"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    proto = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])])
    x = {"x": rng.normal(size=(2, 4)).astype(np.float32)}
    before = _run(proto, x, tmp_path / "before.onnx")
    assert passes.fold_constant_shapes(proto) == 4
    assert [n.op_type for n in proto.graph.node] == ["MatMul"]
    (w,) = [t for t in proto.graph.initializer if t.name == "w"]
    np.testing.assert_array_equal(numpy_helper.to_array(w), kernel.reshape(4, 6))
    assert {t.name for t in proto.graph.initializer} == {"w"}  # the chain's own constants are gone
    np.testing.assert_allclose(_run(proto, x, tmp_path / "after.onnx"), before, atol=1e-6)


def test_rename_io_axes_and_constants_to_initializers():
    const = helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(np.eye(3, dtype=np.float32)))
    proto = _model([const, helper.make_node("MatMul", ["in0", "w"], ["out0"])], [],
                   [helper.make_tensor_value_info("in0", TensorProto.FLOAT, ["p2o.dim.0", 3])],
                   [helper.make_tensor_value_info("out0", TensorProto.FLOAT, [None, 3])])
    passes.rename_io(proto, {"out0": "logits"})
    assert proto.graph.output[0].name == "logits" and list(proto.graph.node[1].output) == ["logits"]
    assert passes.name_dynamic_axes(proto) == 2
    dims = [[d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in list(proto.graph.input) + list(proto.graph.output)]
    assert dims == [["batch", 3], ["batch", 3]]
    assert passes.constants_to_initializers(proto) == 1
    assert [n.op_type for n in proto.graph.node] == ["MatMul"] and [t.name for t in proto.graph.initializer] == ["w"]
    onnx.checker.check_model(proto, full_check=True)


def _qdq_reshape_matmul_graph() -> onnx.ModelProto:
    """x -> Q -> DQ -> Reshape -> MatMul(DQ(int8 W)) -> Reshape back, with Shape(DQ) as tensordot writes it."""

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (8, 4), dtype=np.int8)
    inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_z"),
             numpy_helper.from_array(np.array(0.02, np.float32), "a_s"),
             numpy_helper.from_array(np.array(128, np.uint8), "a_z"),
             numpy_helper.from_array(np.array([-1, 8], np.int64), "flat"),
             numpy_helper.from_array(np.array([4], np.int64), "out_dim")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "a_s", "a_z"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "a_s", "a_z"], ["x_dq"]),
             helper.make_node("Shape", ["x_dq"], ["x_shape"], start=0, end=2),
             helper.make_node("Concat", ["x_shape", "out_dim"], ["y_shape"], axis=0),
             helper.make_node("Reshape", ["x_dq", "flat"], ["x_2d"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=1),
             helper.make_node("MatMul", ["x_2d", "w"], ["y_2d"]),
             helper.make_node("Reshape", ["y_2d", "y_shape"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, None, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_dequantize_moves_next_to_matmul_for_ort_integer_fusion(tmp_path):
    """tensordot's Reshape sits between the activation DQ and the MatMul: the DQ moves after it (the
    Reshape then moves integers), Shape reads the integers, the old DQ goes, and ORT fuses the MatMul."""
    proto = _qdq_reshape_matmul_graph()
    x = {"x": np.random.default_rng(1).normal(size=(2, 3, 8)).astype(np.float32)}
    onnx.save(proto, str(tmp_path / "before.onnx"))
    assert passes.dequantize_next_to_matmul(proto) == 1
    onnx.checker.check_model(proto, full_check=True)
    producer = {o: n for n in proto.graph.node for o in n.output}
    matmul = next(n for n in proto.graph.node if n.op_type == "MatMul")
    assert [producer[i].op_type for i in matmul.input] == ["DequantizeLinear", "DequantizeLinear"]
    assert producer[producer[matmul.input[0]].input[0]].op_type == "Reshape"
    assert sum(n.op_type == "DequantizeLinear" for n in proto.graph.node) == 2  # the old activation DQ is gone
    onnx.save(proto, str(tmp_path / "after.onnx"))
    before = ort.InferenceSession(str(tmp_path / "before.onnx")).run(None, x)[0]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    after = ort.InferenceSession(str(tmp_path / "after.onnx"), options).run(None, x)[0]
    np.testing.assert_allclose(after, before, atol=1e-5)
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert "MatMulIntegerToFloat" in fused and "MatMul" not in fused, fused


