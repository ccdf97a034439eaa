"""ONNX through paddle2onnx (checked, run in ONNX Runtime) and Paddle's native inference format."""
import numpy as np
import pytest

import paddle
import onnx
import onnxruntime as ort
from unicompress import zoo
from unicompress.backend.types import TaskData
from unicompress.specs import QuantizationSpec
from unicompress_paddle.backend import PaddleAdapter

A = PaddleAdapter()
CFG = zoo.config_for("tiny-bert")
X = zoo.inputs_for("tiny-bert", CFG)


def _static_q():
    m = A.build_model("tiny-bert")
    data = TaskData(calibration=lambda: (zoo.inputs_for("tiny-bert", CFG, seed=i) for i in range(3)))
    return m, A.apply(A.copy(m), QuantizationSpec(mode="static"), data)


def test_float_onnx_matches_paddle_with_dynamic_axes(tmp_path):
    m = A.build_model("tiny-bert")
    path = A.export_onnx(m, tmp_path / "m.onnx", X)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    s = ort.InferenceSession(str(path))
    assert np.abs(s.run(None, X)[0] - A.run(m, X)).max() < 1e-5
    x2 = zoo.inputs_for("tiny-bert", CFG, batch=2, length=7)  # other batch and sequence length
    assert np.abs(s.run(None, x2)[0] - A.run(m, x2)).max() < 1e-5
    assert not list(tmp_path.glob(".*"))  # atomic write left no temporary file


def test_vit_onnx(tmp_path):
    m = A.build_model("tiny-vit")
    x = zoo.inputs_for("tiny-vit", zoo.config_for("tiny-vit"), batch=2)
    s = ort.InferenceSession(str(A.export_onnx(m, tmp_path / "v.onnx", x)))
    assert np.abs(s.run(None, x)[0] - A.run(m, x)).max() < 1e-5


def test_quantized_onnx_is_qdq_and_runs_int8_kernels(tmp_path):
    m, q = _static_q()
    path = A.export_onnx(q, tmp_path / "q.onnx", X)
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    # 12 weight + 12 activation DequantizeLinear; Q/K/V read one input with one calibrated scale, so the core
    # rewriter writes one QuantizeLinear for the three: 2 blocks x (qkv, attention output, ffn in, ffn out)
    assert ops.count("DequantizeLinear") == 24 and ops.count("QuantizeLinear") == 8
    ints = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    qw = A.quantized_weights(q)["bert.encoder.layer.0.attention.self.query"].q
    assert any(v.shape == qw.T.shape and np.array_equal(v, qw.T) for v in ints.values())  # Paddle's integers
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    s = ort.InferenceSession(str(path), so)
    assert np.abs(s.run(None, X)[0] - A.run(q, X)).max() < 1e-4
    fused = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert fused & {"MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger"}


def test_paddle_jit_save_of_a_converted_model_is_broken_and_the_pir_safe_path_works(tmp_path):
    from paddle.nn.quant.format import LinearDequanter
    from unicompress_paddle.compat import _PirSafeLinearDequanter
    _, q = _static_q()
    ids, mask = paddle.to_tensor(X["input_ids"]), paddle.to_tensor(X["attention_mask"])
    want = A.run(q, X)
    # undo our patch to show the native path: jit.save refuses the dynamic batch axis
    for layer in q.sublayers():
        if isinstance(layer, _PirSafeLinearDequanter):
            layer.__class__ = LinearDequanter
    from unicompress_paddle.export import input_spec
    with pytest.raises(ValueError, match="no less than 0"):
        paddle.jit.save(q, str(tmp_path / "broken" / "model"), input_spec=input_spec(q, X))
    # with a static batch it saves, but the PIR program's dequantize_linear does not dequantize
    static = [paddle.static.InputSpec(list(X[n].shape), "int64", n) for n in ("input_ids", "attention_mask")]
    paddle.jit.save(q, str(tmp_path / "static" / "model"), input_spec=static)
    wrong = paddle.jit.load(str(tmp_path / "static" / "model"))(ids, mask).numpy()
    assert np.abs(wrong - want).max() > 5e-3  # the 8-bit error itself is ~1e-5 (test above)
    out = A.export_native(q, tmp_path / "native")
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.pdiparams"]
    loaded = paddle.jit.load(str(out / "model"))
    assert np.abs(loaded(ids, mask).numpy() - want).max() < 1e-5


def test_paddleslim_qat_save_quantized_model_is_broken_on_paddle3(tmp_path):
    """PaddleSlim's QAT saves through the legacy ImperativeQuantAware exporter (old IR); Paddle 3 traces
    to PIR, so saving fails. Our QAT path is paddle.quantization.QAT + convert + export_native (above)."""
    from unicompress_paddle.compat import paddleslim
    from unicompress_paddle.export import input_spec
    slim = paddleslim()
    m = A.build_model("tiny-bert")
    qat = slim.QAT(config={"weight_quantize_type": "channel_wise_abs_max",
                           "activation_quantize_type": "moving_average_abs_max", "quantizable_layer_type": ["Linear"]})
    qat.quantize(m)  # works
    m.eval()
    with pytest.raises(TypeError, match="must be Value, but got Variable"):
        qat.save_quantized_model(m, str(tmp_path / "slim" / "model"), input_spec=input_spec(m, X))
    assert paddle.in_dynamic_mode()  # the failure leaves no static mode behind
