"""Quantization through TFMOT (qat, weight_only, static, log emulated) and the TFLite converter (dynamic):
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
from unicompress_tensorflow_testutil import tiny_bert_task

A = TensorFlowAdapter()
Q0 = "bert.encoder.layer.0.attention.self.query"
CFG = zoo.config_for("tiny-bert")
X = zoo.inputs_for("tiny-bert", CFG)


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
def test_tflite_dynamic_int8_matches_reference(bert):
    w = layers.get_weights(bert)
    for spec in (QuantizationSpec(mode="dynamic"), QuantizationSpec(mode="dynamic", granularity="per_tensor")):
        qm = A.apply(A.copy(bert), spec, tiny_bert_task())
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
                 QuantizationSpec(mode="dynamic", overrides=[{"pattern": "*query", "bits": 4}])):
        with pytest.raises(quantization.QuantizationNotSupportedError):
            A.apply(A.copy(bert), spec, tiny_bert_task())


def _input_quantizers(qm) -> dict[str, list[float]]:
    """{Dense name: [min, max]} of the calibrating QuantizeLayers the static path puts on Dense inputs."""
    out = {}
    for layer in qm.layers:
        if isinstance(layer, quantization.QuantizeLayer):
            assert layer.name.endswith(quantization.INPUT_QUANTIZER_SUFFIX)
            dense = layer.name[: -len(quantization.INPUT_QUANTIZER_SUFFIX)]
            # it feeds exactly that Dense (and nothing else: residuals and other layers stay float)
            assert [n.outbound_layer.layer.name for n in layer._outbound_nodes] == [dense]
            out[dense] = sorted(float(v.numpy()) for v in layer.weights if v.name.endswith(("_min:0", "_max:0")))
    return out


def _float_input_range(bert, name, data):
    """min/max of a Dense input over the calibration batches, in the float model (0 included, as TFMOT does)."""
    probe = layers.keras.Model(bert.input, bert.get_layer(name).input)
    outs = [probe(layers.to_tensors(bert, x), training=False).numpy() for x in data.calibration()]
    return [min(min(o.min() for o in outs), 0.0), max(max(o.max() for o in outs), 0.0)]


def test_static_int8_quantizes_the_selected_dense_inputs_only_with_min_max_ranges(bert):
    """Static PTQ: TFMOT weight fake-quant matching the reference, and a calibrated AllValuesQuantizer on the
    input of each selected Dense (no LayerNorm/softmax/GELU/residual quantization); unselected Dense layers
    (pooler, classifier) and skipped ones stay float."""
    spec = QuantizationSpec(mode="static", overrides=[{"pattern": "*.self.value", "skip": True}])
    data = tiny_bert_task()
    qm = A.apply(A.copy(bert), spec, data)
    assert not isinstance(qm, quantization.TFLiteModel)
    expected = {n for n in quantization.selected_dense(bert, spec) if not n.endswith("self.value")}
    qw = A.quantized_weights(qm)
    assert set(qw) == expected
    w = layers.get_weights(bert)
    for name, t in qw.items():
        _check_linear(t, w[name], 8, True, True)
    ranges = _input_quantizers(qm)
    assert set(ranges) == expected
    # only the Dense layers' wrappers and their input quantizers were added: no LayerNorm or other wrapper
    wrapped = {x.layer.name for x in qm.layers if isinstance(x, quantization.QuantizeWrapper)}
    assert wrapped == expected
    # the first query's input is the embeddings' LayerNorm output, upstream of any fake-quant: exact min/max
    np.testing.assert_allclose(ranges[Q0], _float_input_range(bert, Q0, data), rtol=1e-6)
    # deeper layers see upstream int8 rounding: within 2%
    deep = "bert.encoder.layer.1.output.dense"
    np.testing.assert_allclose(ranges[deep], _float_input_range(bert, deep, data), rtol=2e-2)
    assert np.abs(A.run(qm, X) - A.run(bert, X)).max() < 0.01
    assert {s.bits for s in A.describe(qm) if s.name == Q0} == {8}


def test_static_asymmetric_per_tensor_weights_and_symmetric_activations(bert):
    spec = QuantizationSpec(mode="static", scheme="asymmetric", granularity="per_tensor", bits=4,
                            activation_scheme="symmetric")
    qm = A.apply(A.copy(bert), spec, tiny_bert_task())
    w = layers.get_weights(bert)
    for name, t in A.quantized_weights(qm).items():
        _check_linear(t, w[name], 4, False, False)
    for lo, hi in _input_quantizers(qm).values():  # TFMOT's symmetric signed range: min = -max * 128/127
        np.testing.assert_allclose(lo, -hi * 128 / 127, rtol=1e-5)
    assert np.abs(A.run(qm, X) - A.run(bert, X)).max() < 0.05


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
    qm = A.apply(A.copy(bert), spec, tiny_bert_task(), ctx)
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


def test_static_calibration_passes_leave_dropout_and_batchnorm_alone():
    """The calibration calls run in training mode (TFMOT's AllValuesQuantizers record ranges only then):
    Dropout must not drop and BatchNormalization must neither use batch statistics nor update its own."""
    keras = layers.keras
    rng = np.random.default_rng(0)
    inp = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, name="first")(inp)
    h = keras.layers.BatchNormalization(name="norm")(h)
    h = keras.layers.Dropout(0.9, name="drop")(h)
    model = keras.Model(inp, keras.layers.Dense(4, name="second")(h))
    norm = model.get_layer("norm")
    norm.set_weights([w + rng.normal(size=w.shape).astype(np.float32) ** 2 for w in norm.get_weights()])
    batches = [{"x": rng.normal(size=(16, 8)).astype(np.float32)} for _ in range(3)]
    data = TaskData(train=lambda: ((b, np.zeros(16, np.int64)) for b in batches),
                    calibration=lambda: iter(batches), num_labels=4)
    qm = A.apply(A.copy(model), QuantizationSpec(mode="static"), data)
    qnorm = next(x for x in qm.layers if x.name == "norm")
    for before, after in zip(norm.get_weights(), qnorm.get_weights()):
        np.testing.assert_array_equal(before, after)  # moving mean/variance untouched
    assert qm.get_layer("drop").rate == 0.9 and qnorm.trainable  # restored after calibration
    # the input range of "second" is what inference feeds it: no dropout scaling, moving statistics
    probe = keras.Model(model.input, model.get_layer("second").input)
    seen = np.concatenate([probe(b["x"], training=False).numpy() for b in batches])
    np.testing.assert_allclose(_input_quantizers(qm)["second"], [min(seen.min(), 0), max(seen.max(), 0)],
                               rtol=2e-2)
