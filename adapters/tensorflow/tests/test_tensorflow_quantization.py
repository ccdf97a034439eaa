"""Quantization through TFMOT (qat, weight_only, log emulated) and the TFLite converter (dynamic, static):
integer levels, scales and zero-points against the reference."""
from __future__ import annotations

import numpy as np
import pytest
from unicompress import zoo
from unicompress.backend import StageContext, TaskData
from unicompress.reference import quantization as rq
from unicompress.specs import QuantizationSpec

from unicompress_tensorflow import layers, models, quantization
from unicompress_tensorflow.backend import TensorFlowAdapter

A = TensorFlowAdapter()
Q0 = "bert.encoder.layer.0.attention.self.query"
CFG = zoo.config_for("tiny-bert")
X = zoo.inputs_for("tiny-bert", CFG)


def _data():
    def train():
        for i in range(3):
            x = zoo.inputs_for("tiny-bert", CFG, seed=i)
            yield x, (x["input_ids"][:, 1] % 3).astype(np.int64)
    return TaskData(train=train, calibration=lambda: (x for x, _ in train()), num_labels=3)


@pytest.fixture(scope="module")
def bert():
    return models.build_model("tiny-bert")


def _check_linear(t, w, bits, symmetric, per_channel):
    r = rq.quantize_weight(w, bits, symmetric, per_channel)
    assert t.bits == bits and t.axis == r.axis and t.q.shape == w.shape
    np.testing.assert_allclose(np.asarray(t.scale, np.float64), r.scale, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(t.zero_point), r.zero_point)
    assert (t.q == r.q).mean() >= 0.999  # rounding ties may land one level apart
    assert np.abs(t.q - r.q).max() <= 1
    assert t.q.min() >= r.qmin and t.q.max() <= r.qmax
    np.testing.assert_allclose(t.dequantize(), r.dequantize(), atol=float(np.max(r.scale)) + 1e-9)


@pytest.mark.parametrize("bits,scheme,granularity", [
    (8, "symmetric", "per_channel"), (4, "asymmetric", "per_tensor"), (8, "symmetric", "per_tensor"),
    (4, "asymmetric", "per_channel"),
    *(pytest.param(*p, marks=pytest.mark.slow) for p in ((2, "symmetric", "per_channel"),
                                                         (3, "asymmetric", "per_channel"),
                                                         (5, "symmetric", "per_tensor"),
                                                         (6, "symmetric", "per_channel"),
                                                         (7, "asymmetric", "per_tensor")))])
def test_weight_only_tfmot_matches_reference(bert, bits, scheme, granularity):
    spec = QuantizationSpec(mode="weight_only", bits=bits, scheme=scheme, granularity=granularity)
    qm = A.apply(A.copy(bert), spec)
    qw = A.quantized_weights(qm)
    assert set(qw) == set(quantization.selected_dense(bert, spec))  # classifier/pooler stay float
    w = layers.get_weights(bert)
    for name, t in qw.items():
        _check_linear(t, w[name], bits, scheme == "symmetric", granularity == "per_channel")
    # the model computes with those weights: the same as the float model carrying the dequantized weights
    deq = layers.copy_model(bert)
    layers.set_weights(deq, {n: t.dequantize().astype(np.float32) for n, t in qw.items()})
    np.testing.assert_allclose(A.run(qm, X), A.run(deq, X), atol=1e-5)


@pytest.mark.slow
def test_tflite_dynamic_and_static_int8_match_reference(bert):
    w = layers.get_weights(bert)
    for spec in (QuantizationSpec(mode="dynamic"), QuantizationSpec(mode="static"),
                 QuantizationSpec(mode="dynamic", granularity="per_tensor")):
        qm = A.apply(A.copy(bert), spec, _data())
        assert isinstance(qm, quantization.TFLiteModel)
        qw = A.quantized_weights(qm)
        assert Q0 in qw and "bert.encoder.layer.1.output.dense" in qw
        for name in quantization.selected_dense(bert, spec):
            _check_linear(qw[name], w[name], 8, True, spec.granularity.value == "per_channel")
        assert np.abs(A.run(qm, X) - A.run(bert, X)).max() < 0.01
        assert {s.bits for s in A.describe(qm) if s.name == Q0} == {8}


def test_tflite_refuses_what_it_cannot_do(bert):
    for spec in (QuantizationSpec(mode="dynamic", bits=4), QuantizationSpec(mode="dynamic", scheme="asymmetric"),
                 QuantizationSpec(mode="static", calibration={"method": "percentile"}),
                 QuantizationSpec(mode="dynamic", overrides=[{"pattern": "*query", "skip": True}])):
        with pytest.raises(quantization.QuantizationNotSupportedError):
            A.apply(A.copy(bert), spec, _data())


@pytest.mark.slow
def test_static_tflite_keeps_unselected_layers_float(bert):
    """The converter's node denylist keeps the pooler, the classifier and skipped layers in float."""
    spec = QuantizationSpec(mode="static", overrides=[{"pattern": "*.self.value", "skip": True}])
    qm = A.apply(A.copy(bert), spec, _data())
    expected = {n for n in quantization.selected_dense(bert, spec) if not n.endswith("self.value")}
    assert set(A.quantized_weights(qm)) == expected
    assert np.abs(A.run(qm, X) - A.run(bert, X)).max() < 0.01


def test_static_asymmetric_goes_through_tfmot_with_min_max_calibration(bert):
    spec = QuantizationSpec(mode="static", scheme="asymmetric", granularity="per_tensor", bits=8)
    data = _data()
    qm = A.apply(A.copy(bert), spec, data)
    assert not isinstance(qm, quantization.TFLiteModel)
    w = layers.get_weights(bert)
    for name, t in A.quantized_weights(qm).items():
        _check_linear(t, w[name], 8, False, False)
    # the activation range of the first query is the min/max of its outputs over the calibration data
    # (measured on the float model: upstream fake-quant moves it by < 1%; an EMA from TFMOT's [-6, 6] start
    # would be far off)
    wrapper = next(x for x in qm.layers if isinstance(x, quantization.QuantizeWrapper) and x.layer.name == Q0)
    probe = layers.keras.Model(bert.input, bert.get_layer(Q0).output)
    outs = [probe(layers.to_tensors(bert, x), training=False).numpy() for x, _ in data.train()]
    lo, hi = min(o.min() for o in outs), max(o.max() for o in outs)
    qvars = [v for v in wrapper.weights if "output" in v.name and ("min" in v.name or "max" in v.name)]
    got = sorted(float(v.numpy()) for v in qvars)
    np.testing.assert_allclose(got, [min(lo, 0.0), max(hi, 0.0)], rtol=1e-2)
    assert np.abs(A.run(qm, X) - A.run(bert, X)).max() < 0.01


def test_tfmot_quantize_model_refuses_transformer_layers_and_annotation_works(bert):
    """The native whole-model call breaks on LayerNormalization/custom layers; our QuantizeConfigs work."""
    # BERT: the int64 token ids hit TFMOT's input QuantizeLayer (a float fake-quant)
    with pytest.raises(TypeError, match="int64"):
        quantization.tfq.quantize_model(layers.copy_model(bert))
    # float inputs: custom layers and LayerNormalization are refused
    with pytest.raises(RuntimeError, match="Patchify.* is not supported"):
        quantization.tfq.quantize_model(models.build_model("tiny-vit"))
    keras = layers.keras
    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.LayerNormalization()])
    with pytest.raises(RuntimeError, match="LayerNormalization.* is not supported"):
        quantization.tfq.quantize_model(small)
    spec = QuantizationSpec(mode="qat", training={"steps": 2, "learning_rate": 1e-4})
    ctx = StageContext()
    qm = A.apply(A.copy(bert), spec, _data(), ctx)
    wrapped = {w.layer.name for w in qm.layers if isinstance(w, quantization.QuantizeWrapper)}
    assert "bert.encoder.layer.0.attention.output.LayerNorm" in wrapped and Q0 in wrapped
    assert len(ctx.history["loss"]) == 2
    w = A.weights(qm)  # the float weights after QAT
    for name, t in A.quantized_weights(qm).items():
        _check_linear(t, w[name], 8, True, True)


def test_mixed_precision_overrides(bert):
    spec = QuantizationSpec(mode="weight_only", bits=8, overrides=[
        {"pattern": "*.intermediate.dense", "bits": 4, "granularity": "per_tensor"},
        {"pattern": "*.attention.self.value", "skip": True}])
    qw = A.quantized_weights(A.apply(A.copy(bert), spec))
    assert not any(n.endswith("self.value") for n in qw)
    assert qw["bert.encoder.layer.0.intermediate.dense"].bits == 4
    assert qw["bert.encoder.layer.0.intermediate.dense"].axis is None
    assert qw[Q0].bits == 8 and qw[Q0].axis == 0
    w = layers.get_weights(bert)
    _check_linear(qw["bert.encoder.layer.1.intermediate.dense"], w["bert.encoder.layer.1.intermediate.dense"],
                  4, True, False)


def test_log_quantization_emulated_matches_reference(bert):
    spec = QuantizationSpec(mode="weight_only", mapping="log", bits=4)
    qm = A.apply(A.copy(bert), spec)
    w = layers.get_weights(bert)
    for name, t in A.quantized_weights(qm).items():
        r = rq.log_quantize(w[name], 4, 2.0, True)
        assert t.mapping == "log"
        np.testing.assert_array_equal(t.q, r.q)
        np.testing.assert_array_equal(t.sign, r.sign)
        np.testing.assert_allclose(t.dequantize(), r.dequantize(), rtol=1e-6, atol=1e-9)
