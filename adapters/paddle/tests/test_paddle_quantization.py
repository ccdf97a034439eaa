"""Quantization through paddle.quantization + PaddleSlim observers; integers and scales vs the reference."""
import numpy as np
import pytest

import paddle  # noqa: F401
from unicompress import reference as R
from unicompress import zoo
from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import QuantizationSpec
from unicompress_paddle.backend import PaddleAdapter

A = PaddleAdapter()
CFG = zoo.config_for("tiny-bert")
X = zoo.inputs_for("tiny-bert", CFG)
Q = "bert.encoder.layer.0.attention.self.query"
ENCODER = [n for n, r, _ in zoo.bert.linear_names(CFG) if r not in ("pooler", "classifier")]


def data():
    rng = np.random.default_rng(1)
    return TaskData(calibration=lambda: (zoo.inputs_for("tiny-bert", CFG, seed=i) for i in range(3)),
                    train=lambda: ((zoo.inputs_for("tiny-bert", CFG, batch=4, length=8, seed=i),
                                    rng.integers(0, 3, 4).astype(np.int64)) for i in range(3)), num_labels=3)


def quantized(spec, ctx=None):
    m = A.build_model("tiny-bert")
    q = A.apply(A.copy(m), QuantizationSpec.model_validate({"technique": "quantization", **spec}), data(),
                ctx or StageContext())
    return m, q


@pytest.mark.parametrize("gran", ["per_channel", "per_tensor"])
def test_static_ptq_integers_match_reference(gran):
    m, q = quantized({"mode": "static", "granularity": gran})
    w = A.weights(m)
    qw = A.quantized_weights(q)
    assert set(qw) == set(ENCODER)
    for n in ENCODER:
        ref = R.quantize_weight(w[n], 8, per_channel=gran == "per_channel")
        assert qw[n].axis == (0 if gran == "per_channel" else None) and qw[n].bits == 8
        assert np.mean(qw[n].q == ref.q) > 0.999 and np.abs(qw[n].q).max() <= 127
        np.testing.assert_allclose(qw[n].scale, ref.scale, rtol=1e-6)
    # the quantized model still computes the same function (8-bit error only) and reports its bits
    assert np.abs(A.run(q, X) - A.run(m, X)).max() < 5e-3
    bits = {s.name: s.bits for s in A.describe(q)}
    assert bits[Q] == 8 and bits["classifier"] == 32


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_calibration_methods_give_other_activation_ranges(method):
    from unicompress_paddle.quantization import activation_scale
    _, base = quantized({"mode": "static"})
    _, q = quantized({"mode": "static", "calibration": {"method": method, "percentile": 99.0}})
    layer = dict(q.named_sublayers())[Q]
    a, b = activation_scale(layer), activation_scale(dict(base.named_sublayers())[Q])
    assert 0 < a < b  # clipping calibrations choose a smaller range than min-max
    assert np.abs(A.run(q, X) - A.run(base, X)).max() < 5e-2


def test_weight_only_4_bit_per_channel_matches_reference(tmp_path):
    m, q = quantized({"mode": "weight_only", "bits": 4})
    w = A.weights(m)
    qw = A.quantized_weights(q)
    ref = R.quantize_weight(w[Q], 4)
    assert qw[Q].bits == 4 and np.abs(qw[Q].q).max() <= 7
    assert np.mean(qw[Q].q == ref.q) > 0.999
    np.testing.assert_allclose(qw[Q].scale, ref.scale, rtol=1e-6)
    import onnxruntime as ort
    s = ort.InferenceSession(str(A.export_onnx(q, tmp_path / "w4.onnx", X)))
    assert np.abs(s.run(None, X)[0] - A.run(q, X)).max() < 1e-4


def test_weight_only_10_bit_exports_in_an_int32_container(tmp_path):
    _, q = quantized({"mode": "weight_only", "bits": 10})
    assert np.abs(A.quantized_weights(q)[Q].q).max() == 511
    import onnx
    import onnxruntime as ort
    path = A.export_onnx(q, tmp_path / "w10.onnx", X)
    kinds = {i.data_type for i in onnx.load(str(path)).graph.initializer}
    assert onnx.TensorProto.INT32 in kinds and onnx.TensorProto.INT8 not in kinds
    s = ort.InferenceSession(str(path))
    assert np.abs(s.run(None, X)[0] - A.run(q, X)).max() < 1e-5


def test_weight_only_and_overrides_for_mixed_precision():
    _, q = quantized({"mode": "weight_only", "overrides": [
        {"pattern": "*.layer.1.*", "skip": True}, {"pattern": "*.output.dense", "bits": 4},
        {"pattern": "*.attention.self.*", "granularity": "per_tensor"}]})
    qw = A.quantized_weights(q)
    assert all(".layer.0." in n for n in qw) and len(qw) == 6
    assert qw[Q].axis is None and qw["bert.encoder.layer.0.intermediate.dense"].axis == 0
    assert qw["bert.encoder.layer.0.output.dense"].bits == 4 and qw[Q].bits == 8
    from unicompress_paddle.quantization import activation_scale
    assert activation_scale(dict(q.named_sublayers())[Q]) is None  # activations stay float


def test_qat_trains_and_converts():
    ctx = StageContext()
    m, q = quantized({"mode": "qat", "training": {"steps": 3, "learning_rate": 1e-3}}, ctx)
    assert len(ctx.history["loss"]) == 3
    qw = A.quantized_weights(q)
    assert set(qw) == set(ENCODER) and all(np.abs(t.q).max() <= 127 for t in qw.values())
    assert np.abs(A.run(q, X) - A.run(m, X)).max() < 0.1


def test_log_quantization_is_emulated_like_the_reference():
    m, q = quantized({"mode": "weight_only", "mapping": "log", "bits": 8})
    w = A.weights(m)
    qw = A.quantized_weights(q)
    ref = R.log_quantize(w[Q], 8, 2.0)
    assert qw[Q].mapping == "log"
    assert np.mean(qw[Q].q == ref.q) > 0.999 and np.array_equal(qw[Q].sign, ref.sign)
    np.testing.assert_allclose(qw[Q].dequantize(), ref.dequantize(), rtol=1e-5, atol=1e-7)
    # the model computes with the log-quantized weights
    layer = dict(q.named_sublayers())[Q]
    eff = layer._fake(layer.weight).numpy().T
    np.testing.assert_allclose(eff, ref.dequantize(), rtol=1e-5, atol=1e-7)
    assert A.capabilities().support("quantization", "mapping", "log").value == "emulated"


def test_dynamic_and_asymmetric_are_not_claimed():
    caps = A.capabilities()
    assert caps.support("quantization", "mode", "dynamic").value == "unsupported"
    assert caps.support("quantization", "scheme", "asymmetric").value == "unsupported"
