"""TFLite dynamic-range quantization restricted to the spec's selector: the raw converter quantizes every
large constant whatever the selector says; our flatbuffer edit (TensorFlow's flatbuffer_utils) puts the
original float32 weights back outside the selected Dense kernels. Real converter, real interpreter,
real tf2onnx + ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from unicompress import compress, zoo
from unicompress.errors import CapabilityError
from unicompress.reference import quantization as rq
from unicompress.specs import QuantizationSpec

from unicompress_tensorflow import export, layers, models, quantization, tflite
from unicompress_tensorflow.backend import TensorFlowAdapter
from unicompress_tensorflow_testutil import tiny_bert_task

A = TensorFlowAdapter()
CFG = zoo.config_for("tiny-bert")
X = zoo.inputs_for("tiny-bert", CFG)
#: only the queries and the FFN-in layers: keys, values, attention outputs, FFN-out, pooler stay float
SPEC = QuantizationSpec(mode="dynamic", selector={"include": ["*.attention.self.query", "*.intermediate.dense"]})
EMBEDDINGS = ("bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings")


def _graph(flatbuffer: bytes):
    """(ModelT, subgraph 0, [(op name, op)])."""
    from tensorflow.lite.tools import flatbuffer_utils

    fb = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    g = fb.subgraphs[0]
    return fb, g, [(flatbuffer_utils.opcode_to_name(fb, op.opcodeIndex), op) for op in g.operators]


def _constant(fb, g, index: int) -> tuple[str, np.ndarray]:
    """(type name, raw array) of a constant tensor as stored in the flatbuffer."""
    from tensorflow.lite.tools import flatbuffer_utils

    t = g.tensors[index]
    kind = flatbuffer_utils.type_to_name(t.type)
    dtype = {"FLOAT32": "<f4", "INT8": np.int8}[kind]
    return kind, np.frombuffer(bytes(fb.buffers[t.buffer].data), dtype).reshape(list(t.shape))


def _fc_weights(flatbuffer: bytes, names) -> dict[str, tuple[str, np.ndarray]]:
    """{layer: (type, weight [out, in])} of every FULLY_CONNECTED op of the flatbuffer."""
    fb, g, ops = _graph(flatbuffer)
    out = {}
    for name, op in ops:
        if name == "FULLY_CONNECTED":
            layer = tflite._owning_layer(g.tensors[op.inputs[1]].name, names)
            out[layer] = _constant(fb, g, op.inputs[1])
    return out


def _is_constant(fb, g, index: int) -> bool:
    data = fb.buffers[g.tensors[index].buffer].data
    return data is not None and len(data) > 0


def _gathers(fb, g, ops) -> list:
    """GATHER ops reading a float or int8 constant table (the embeddings)."""
    return [op for name, op in ops if name == "GATHER" and _is_constant(fb, g, op.inputs[0])
            and g.tensors[op.inputs[0]].type in (0, 9)]  # FLOAT32, INT8


def _gather_tables(flatbuffer: bytes) -> dict[str, str]:
    """{embedding table tensor name: type} of every GATHER reading a constant table."""
    fb, g, ops = _graph(flatbuffer)
    return {g.tensors[op.inputs[0]].name.decode(): _constant(fb, g, op.inputs[0])[0] for op in _gathers(fb, g, ops)}


@pytest.fixture(scope="module")
def bert():
    return models.build_model("tiny-bert")


@pytest.fixture(scope="module")
def raw(bert):
    """The converter's own output for SPEC (the same converter settings the adapter uses)."""
    return tflite.dynamic_range_converter(bert, SPEC).convert()


@pytest.fixture(scope="module")
def quantized(bert):
    return A.apply(A.copy(bert), SPEC)


def test_raw_converter_ignores_the_selector(bert, raw):
    """The broken behaviour: every Dense of >= 1024 weights (pooler included) and the embedding tables
    come out int8, although the selector chose 4 layers."""
    names = layers.named_layers(bert)
    int8 = {n for n, (kind, _) in _fc_weights(raw, names).items() if kind == "INT8"}
    selected = set(quantization.selected_dense(bert, SPEC))
    assert len(selected) == 4
    assert int8 > selected
    assert {"bert.pooler.dense", "bert.encoder.layer.0.attention.self.key",
            "bert.encoder.layer.1.output.dense"} <= int8
    tables = _gather_tables(raw)
    assert all(any(e in t and kind == "INT8" for t, kind in tables.items()) for e in EMBEDDINGS)


def test_restored_constants_run_as_float_kernels(bert, raw):
    """Every constant restored (nothing kept): no integer tensor is left and the interpreter computes what
    the float Keras model computes, so the hybrid ops picked their float kernels from the weight type."""
    from tensorflow.lite.tools import flatbuffer_utils

    flatbuffer = tflite.keep_float_outside(raw, bert, [])
    fb, g, ops = _graph(flatbuffer)
    assert not [t for t in g.tensors if flatbuffer_utils.type_to_name(t.type) == "INT8"]
    assert not any(getattr(op.builtinOptions, "asymmetricQuantizeInputs", False) for _, op in ops)
    y = tflite.TFLiteModel(flatbuffer, bert, "dynamic").run(X)
    np.testing.assert_allclose(y, A.run(bert, X), atol=1e-6)
    y_raw = tflite.TFLiteModel(raw, bert, "dynamic").run(X)
    assert np.abs(y_raw - A.run(bert, X)).max() > 1e-5  # the raw model's integer kernels are visible


def test_dynamic_range_quantizes_exactly_the_selected_dense_layers(bert, raw, quantized):
    assert isinstance(quantized, tflite.TFLiteModel)
    selected = set(quantization.selected_dense(bert, SPEC))
    qw = A.quantized_weights(quantized)
    assert set(qw) == selected
    w = layers.get_weights(bert)
    for name, t in qw.items():  # the converter's integers and scales, against the reference
        r = rq.quantize_weight(w[name], 8, True, True)
        np.testing.assert_allclose(np.asarray(t.scale, np.float64), r.scale, rtol=1e-6)
        assert np.abs(t.q - r.q).max() <= 1 and (t.q == r.q).mean() >= 0.999
    # in the flatbuffer: the selected kernels int8, every other FULLY_CONNECTED weight bit-identical float32
    fcs = _fc_weights(quantized.flatbuffer, layers.named_layers(bert))
    assert {n for n, (kind, _) in fcs.items() if kind == "INT8"} == selected
    for name, (kind, arr) in fcs.items():
        if name not in selected:
            assert kind == "FLOAT32"
            np.testing.assert_array_equal(arr, w[name])  # the Keras weights, not dequantized integers
    # embedding tables float again, bit-identical, and no DEQUANTIZE left behind them
    emb = {n: layers.named_layers(bert)[n].embeddings.numpy() for n in EMBEDDINGS}
    fb, g, ops = _graph(quantized.flatbuffer)
    for n, table in emb.items():
        op = next(op for op in _gathers(fb, g, ops) if n in g.tensors[op.inputs[0]].name.decode())
        kind, arr = _constant(fb, g, op.inputs[0])
        assert kind == "FLOAT32" and g.tensors[op.outputs[0]].type == g.tensors[op.inputs[0]].type
        np.testing.assert_array_equal(arr, table)
    assert "DEQUANTIZE" not in [name for name, _ in ops]
    assert len(_graph(raw)[2]) == len(ops) + 2  # only the two embedding DEQUANTIZE ops went
    # it runs in tf.lite.Interpreter, close to the float model, closer than the raw converter's model
    y0 = A.run(bert, X)
    diff = np.abs(A.run(quantized, X) - y0).max()
    raw_diff = np.abs(tflite.TFLiteModel(raw, bert, "dynamic").run(X) - y0).max()
    assert 0 < diff < 1e-3 and diff < raw_diff
    assert {s.name: s.bits for s in A.describe(quantized)}["bert.encoder.layer.0.attention.self.key"] != 8


def test_dynamic_range_onnx_matches_the_interpreter(bert, quantized, tmp_path):
    """tf2onnx.from_tflite: int8 weights + DequantizeLinear for the selected layers only; the restored
    layers are plain float MatMuls (no DynamicQuantizeLinear on their weights); ORT matches TFLite."""
    import onnx

    path = A.export_onnx(quantized, tmp_path / "model.onnx", X)
    proto = onnx.load(str(path))
    consts = {t.name for t in proto.graph.initializer}
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts]
    assert len(weight_dq) == 4
    assert not [n for n in proto.graph.node if n.op_type == "DynamicQuantizeLinear" and n.input[0] in consts]
    x = zoo.inputs_for("tiny-bert", CFG, seed=3)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = sess.run(["logits"], {i.name: x[i.name] for i in sess.get_inputs()})[0]
    np.testing.assert_allclose(y, A.run(quantized, x), atol=1e-5)


def test_dynamic_range_skip_override_and_per_tensor(bert):
    """A skip override keeps those layers float; per-tensor gives one scale per kernel."""
    spec = QuantizationSpec(mode="dynamic", granularity="per_tensor",
                            overrides=[{"pattern": "*.attention.self.*", "skip": True}])
    qm = A.apply(A.copy(bert), spec)
    want = {n for n in quantization.selected_dense(bert, spec) if ".attention.self." not in n}
    qw = A.quantized_weights(qm)
    assert set(qw) == want and all(t.axis is None and np.ndim(t.scale) == 0 for t in qw.values())


def test_dynamic_range_refuses_what_the_converter_cannot_do(bert):
    keras = layers.keras
    small = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, name="ffn_in"),
                              keras.layers.Dense(4, name="ffn_out")])
    with pytest.raises(quantization.QuantizationNotSupportedError, match="fewer than 1024"):
        A.apply(A.copy(small), QuantizationSpec(mode="dynamic", selector={"roles": ["other", "ffn_in", "ffn_out"]}))
    # combinations refused before the model is touched (Adapter.refusals -> CapabilityError)
    for spec in (QuantizationSpec(mode="dynamic", bits=4), QuantizationSpec(mode="dynamic", scheme="asymmetric"),
                 QuantizationSpec(mode="dynamic", overrides=[{"pattern": "*query", "bits": 4}])):
        assert A.refusals(spec)
        with pytest.raises(CapabilityError):
            compress(layers.copy_model(bert), spec, backend="tensorflow", progress=False)
    assert not A.refusals(SPEC)
    assert "dynamic" in A.capabilities().table["quantization"]["mode"]


def test_native_export_is_the_edited_flatbuffer(quantized, tmp_path):
    path = A.export_native(quantized, tmp_path)
    assert path.read_bytes() == quantized.flatbuffer
    assert export.tflite_flatbuffer(quantized) == quantized.flatbuffer


# ---- static: TFLite full-int8 native export, the selected Dense layers only ---------------------------------


def _input_types(flatbuffer: bytes) -> dict[str, set]:
    """{op name: set of its input tensor types} over the whole graph."""
    from tensorflow.lite.tools import flatbuffer_utils

    fb, g, ops = _graph(flatbuffer)
    out: dict[str, set] = {}
    for name, op in ops:
        out.setdefault(name, set()).update(flatbuffer_utils.type_to_name(g.tensors[i].type)
                                           for i in op.inputs if i >= 0)
    return out


@pytest.fixture(scope="module")
def static(bert):
    spec = QuantizationSpec(mode="static", overrides=[{"pattern": "*.self.value", "skip": True}])
    return spec, A.apply(A.copy(bert), spec, tiny_bert_task())


def test_static_native_export_is_int8_for_the_selected_dense_layers_only(bert, static, tmp_path):
    """Converter calibration (representative dataset = the spec's calibration batches) + TFLite's MLIR
    quantizer with denylists: integer FULLY_CONNECTED for the selected, non-skipped Dense layers; softmax,
    LayerNorm, GELU, the attention matmuls, the skipped values, pooler and classifier stay float."""
    import tensorflow as tf

    spec, qm = static
    path = A.export_native(qm, tmp_path)
    flatbuffer = path.read_bytes()
    names = layers.named_layers(bert)
    expected = {n for n in quantization.selected_dense(bert, spec) if not n.endswith(".self.value")}
    assert set(tflite.int8_fully_connected(flatbuffer, names)) == expected
    fcs = _fc_weights(flatbuffer, names)
    w = layers.get_weights(bert)
    for name, (kind, arr) in fcs.items():
        if name in expected:
            r = rq.quantize_weight(w[name], 8, True, True)  # TFLite's integers against the reference
            assert kind == "INT8" and np.abs(arr.astype(np.int64) - r.q).max() <= 1
        else:
            assert kind == "FLOAT32"
            np.testing.assert_array_equal(arr, w[name])
    types = _input_types(flatbuffer)
    for op in ("SOFTMAX", "GELU", "MEAN", "BATCH_MATMUL", "SQUARED_DIFFERENCE", "ADD", "MUL"):
        assert "INT8" not in types[op], op
    assert types["QUANTIZE"] == {"FLOAT32"} and types["DEQUANTIZE"] == {"INT8"}
    # the first query's input is quantized with the calibration range of its float input (TFLite's min/max)
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    fc = next(op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"
              and "layer.0.attention.self.query" in details[op["inputs"][1]]["name"])
    scale, zero = details[fc["inputs"][0]]["quantization"]
    probe = layers.keras.Model(bert.input, bert.get_layer("bert.encoder.layer.0.attention.self.query").input)
    seen = np.concatenate([probe(layers.to_tensors(bert, x), training=False).numpy().ravel()
                           for x in tiny_bert_task().calibration()])
    np.testing.assert_allclose(scale * 255, max(seen.max(), 0) - min(seen.min(), 0), rtol=1e-2)
    # it runs, close to the float model and to the TFMOT model it stands for
    x = zoo.inputs_for("tiny-bert", CFG, seed=5)
    out = next(iter(interpreter.get_signature_runner()(**x).values()))
    assert np.abs(out - A.run(bert, x)).max() < 1e-4
    assert np.abs(out - A.run(qm, x)).max() < 1e-4


def test_plain_full_int8_conversion_quantizes_softmax_layernorm_and_gelu(bert):
    """Why the denylists: Optimize.DEFAULT + a representative dataset (the documented full-int8 path)
    quantizes every op it can, whatever the spec selected."""
    import tensorflow as tf

    batches = list(tiny_bert_task().calibration())
    order = [t.name.split(":")[0] for t in bert.inputs]
    converter = tf.lite.TFLiteConverter.from_keras_model(bert)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[k] for k in order] for x in batches)
    types = _input_types(converter.convert())
    assert "INT8" in types["SOFTMAX"] and "INT8" in types["ADD"] and "INT8" in types["BATCH_MATMUL"]


def test_static_specs_tflite_cannot_run_keep_the_fake_quant_export(bert):
    """4-bit weights (or symmetric activations, asymmetric weights) have no TFLite int8 kernel: the static
    model is not registered for the int8 export, which then converts TFMOT's fake-quant as before."""
    assert tflite.tflite_int8_problems(QuantizationSpec(mode="static", bits=4))
    assert tflite.tflite_int8_problems(QuantizationSpec(mode="static", activation_scheme="symmetric"))
    assert not tflite.tflite_int8_problems(QuantizationSpec(mode="static", granularity="per_tensor"))
    qm = quantization.tfmot_static(layers.copy_model(bert), QuantizationSpec(mode="static", bits=4),
                                   tiny_bert_task())
    assert tflite.static_int8_flatbuffer(qm) is None


def test_static_int8_export_per_tensor(bert):
    """granularity per_tensor: TFLite's quantizer with per-channel off gives one scale per kernel."""
    flatbuffer = tflite.tflite_full_int8(bert, list(tiny_bert_task().calibration()),
                                               ["bert.encoder.layer.0.attention.self.query"], per_channel=False)
    qw = tflite.TFLiteModel(flatbuffer, bert, "static").quantized_weights()
    t = qw["bert.encoder.layer.0.attention.self.query"]
    assert set(qw) == {"bert.encoder.layer.0.attention.self.query"} and t.axis is None
    r = rq.quantize_weight(layers.get_weights(bert)["bert.encoder.layer.0.attention.self.query"], 8, True, False)
    np.testing.assert_allclose(float(t.scale), float(r.scale), rtol=1e-6)
