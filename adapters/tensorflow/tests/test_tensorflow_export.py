"""ONNX export (tf2onnx) checked and run in ONNX Runtime against the Keras outputs; TFLite native export."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from unicompress import zoo
from unicompress.backend import TaskData
from unicompress.specs import PruningSpec, QuantizationSpec

from unicompress_tensorflow import export, layers, models
from unicompress_tensorflow.backend import TensorFlowAdapter

A = TensorFlowAdapter()


def _ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    return sess.run(["logits"], {i.name: x[i.name] for i in sess.get_inputs()})[0], sess


def test_tiny_bert_onnx_matches_keras_with_dynamic_axes(tmp_path):
    model = models.build_model("tiny-bert")
    cfg = zoo.config_for("tiny-bert")
    path = A.export_onnx(model, tmp_path / "bert.onnx", zoo.inputs_for("tiny-bert", cfg))
    onnx.checker.check_model(onnx.load(str(path)))
    for batch, length in ((4, 16), (2, 9)):  # batch and sequence axes are dynamic
        x = zoo.inputs_for("tiny-bert", cfg, batch=batch, length=length)
        got, sess = _ort(path, x)
        np.testing.assert_allclose(got, A.run(model, x), atol=1e-5, rtol=0)
    assert sorted(i.name for i in sess.get_inputs()) == ["attention_mask", "input_ids"]
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    # the five LayerNorms are single LayerNormalization nodes, the two GELUs in the form ORT fuses
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("LayerNormalization") == 5 and "GlobalAveragePool" not in ops
    assert ops.count("Erf") == 2 and ops.count("Div") == 2 and "Neg" not in ops
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert fused.count("Gelu") + fused.count("BiasGelu") == 2


def test_input_order_pitfall_of_from_keras_is_handled(tmp_path):
    """from_keras binds the signature to model.inputs by position (sorted dict keys)."""
    model = models.build_model("tiny-bert")
    assert [t.name.split(":")[0] for t in model.inputs] == ["attention_mask", "input_ids"]
    assert [s.name for s in export.input_signature(model)] == ["attention_mask", "input_ids"]


@pytest.mark.slow
def test_vit_and_pruned_model_onnx_match_keras(tmp_path):
    vit = models.build_model("tiny-vit")
    x = zoo.inputs_for("tiny-vit", zoo.config_for("tiny-vit"))
    got, _ = _ort(A.export_onnx(vit, tmp_path / "vit.onnx", x), x)
    np.testing.assert_allclose(got, A.run(vit, x), atol=1e-5, rtol=0)
    pruned = A.apply(models.build_model("tiny-bert"), PruningSpec(granularity="n_m", n=2, m=4))
    xb = zoo.inputs_for("tiny-bert", zoo.config_for("tiny-bert"))
    path = A.export_onnx(pruned, tmp_path / "pruned.onnx", xb)
    got, _ = _ort(path, xb)
    np.testing.assert_allclose(got, A.run(pruned, xb), atol=1e-5, rtol=0)
    zeros = [float((onnx.numpy_helper.to_array(t) == 0).mean()) for t in onnx.load(str(path)).graph.initializer
             if onnx.numpy_helper.to_array(t).shape == (32, 32)]
    assert sum(z >= 0.5 for z in zeros) == 8  # Q/K/V/O of both blocks keep their 2:4 zeros in the file


@pytest.mark.slow
def test_quantized_models_export_as_qdq(tmp_path):
    bert = models.build_model("tiny-bert")
    cfg = zoo.config_for("tiny-bert")
    x = zoo.inputs_for("tiny-bert", cfg)

    def train():
        for i in range(2):
            xi = zoo.inputs_for("tiny-bert", cfg, seed=i)
            yield xi, (xi["input_ids"][:, 1] % 3).astype(np.int64)
    data = TaskData(train=train, calibration=lambda: (a for a, _ in train()), num_labels=3)
    for spec in (QuantizationSpec(mode="weight_only"), QuantizationSpec(mode="static"),
                 QuantizationSpec(mode="qat", training={"steps": 1, "learning_rate": 1e-5})):
        qm = A.apply(A.copy(bert), spec, data)
        path = A.export_onnx(qm, tmp_path / f"{spec.mode.value}.onnx", x)
        graph = onnx.load(str(path)).graph
        ops = [n.op_type for n in graph.node]
        assert "DequantizeLinear" in ops, spec.mode
        int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
        assert len(int8) >= 12, spec.mode  # every selected Dense kernel is stored as int8
        got, _ = _ort(path, x)
        np.testing.assert_allclose(got, A.run(qm, x), atol=2e-3, rtol=0)
        if spec.mode.value == "static":
            # both MatMul inputs come straight from a DequantizeLinear (what ORT fuses into an integer
            # MatMul); activation QuantizeLinear only on those 12 Dense inputs (Q/K/V share one)
            producer = {o: n for n in graph.node for o in n.output}
            quantized = [n for n in graph.node if n.op_type == "MatMul"
                         and producer.get(n.input[1]) is not None and producer[n.input[1]].op_type == "DequantizeLinear"]
            assert len(quantized) == 12
            assert all(producer[n.input[0]].op_type == "DequantizeLinear" for n in quantized)
            assert ops.count("QuantizeLinear") == 8


def test_weight_only_user_encoder_stores_every_quantized_kernel_as_integers(tmp_path):
    """tf2onnx writes the MultiHeadAttention projections of the user encoder as Gemm with transB ([out, in]
    initializers): the core rewriter finds them by value in that orientation, so all 12 quantized kernels
    (4 Dense + 8 attention projections) are integers + DequantizeLinear, equal to TFMOT's integers."""
    from onnx import numpy_helper

    user = A.build_model("user-encoder", seed=0, num_labels=3)
    x = zoo.inputs_for("tiny-bert", zoo.config_for("tiny-bert"))
    qm = A.apply(A.copy(user), QuantizationSpec(mode="weight_only"))
    qw = A.quantized_weights(qm)
    path = A.export_onnx(qm, tmp_path / "wo.onnx", x)
    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(qw) == 12 and len(dq) == 12
    stored = [inits[n.input[0]] for n in dq]
    for name, t in qw.items():  # each layer's integers are in the file, as [in, out] or [out, in]
        assert any(np.array_equal(v, t.q.T) or np.array_equal(v, t.q) for v in stored), name
    consumers = {n.op_type for n in graph.node for d in dq if d.output[0] in n.input}
    assert consumers == {"MatMul", "Gemm"}
    want = A.run(qm, x)
    so = ort.SessionOptions()  # the graph's own arithmetic (dequantized weights): Keras' numbers
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(["logits"], x)[0]
    np.testing.assert_allclose(plain, want, atol=1e-5, rtol=0)
    got, _ = _ort(path, x)  # ORT's int8 kernels: within the suite's quantized tolerance (relative L2)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.05


@pytest.mark.slow
def test_native_export_is_a_tflite_flatbuffer(tmp_path):
    model = models.build_model("tiny-bert")
    path = A.export_native(model, tmp_path / "native")
    assert path.name == "model.tflite" and path.read_bytes()[4:8] == b"TFL3"
    import tensorflow as tf
    runner = tf.lite.Interpreter(model_path=str(path)).get_signature_runner()
    x = zoo.inputs_for("tiny-bert", zoo.config_for("tiny-bert"))
    out = next(iter(runner(**x).values()))
    np.testing.assert_allclose(out, layers.run(model, x), atol=1e-5)


@pytest.mark.slow
def test_tf2onnx_optimizer_copies_are_collected(tmp_path):
    """tf2onnx's optimize_graph deep-copies the graph before each pass; the dropped copies are cyclic
    garbage that Python's collector frees late (6.2 GB peak on MiniLM). `onnx_optimizers` collects
    before each pass: the same passes and result, without the pile of dead graphs."""
    import gc

    import tf2onnx

    model = models.build_model("tiny-bert")
    sig = export.input_signature(model)

    def dead_graphs(**kwargs) -> tuple[int, onnx.ModelProto]:
        gc.collect()
        gc.disable()
        try:
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=sig, opset=17,
                                                  custom_op_handlers=export.CUSTOM_OP_HANDLERS, **kwargs)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            dead = sum(isinstance(o, tf2onnx.graph.Graph) for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        return dead, proto

    plain, plain_proto = dead_graphs()
    ours, our_proto = dead_graphs(optimizers=export.onnx_optimizers())
    assert set(export.onnx_optimizers()) == set(tf2onnx.optimizer._get_optimizers())
    assert plain >= 10 and ours <= plain // 5, (plain, ours)  # measured on tiny-bert: 37 dead graphs vs 3
    assert sorted(n.op_type for n in our_proto.graph.node) == sorted(n.op_type for n in plain_proto.graph.node)


@pytest.mark.slow
def test_static_native_export_is_int8_where_optimize_default_breaks(tmp_path):
    """The TFLite converter with Optimize.DEFAULT (the QAT-model path) fails on the static model's per-channel
    fake-quant kernels behind tensordot's transpose; `export_native` instead builds TFLite's own int8 model
    (calibrated float model, mlir_quantize with everything but the selected FULLY_CONNECTED denylisted),
    whose QUANTIZE/DEQUANTIZE ops sit around the integer layers, and it computes what `run` computes."""
    import tensorflow as tf

    from unicompress_tensorflow.quantization import tfmot_static

    bert = models.build_model("tiny-bert")
    cfg = zoo.config_for("tiny-bert")
    x = zoo.inputs_for("tiny-bert", cfg)
    data = TaskData(train=lambda: iter([(x, np.zeros(len(x["input_ids"]), np.int64))]),
                    calibration=lambda: iter([x]), num_labels=3)
    qm = tfmot_static(layers.copy_model(bert), QuantizationSpec(mode="static"), data)
    converter = tf.lite.TFLiteConverter.from_keras_model(qm)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with pytest.raises(Exception, match="mismatched quantized axes"):
        converter.convert()
    path = A.export_native(qm, tmp_path / "native")
    interpreter = tf.lite.Interpreter(model_path=str(path))
    ops = [o["op_name"] for o in interpreter._get_ops_details()]
    assert ops.count("QUANTIZE") >= 8 and ops.count("DEQUANTIZE") >= 8
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    int8_fc = [o for o in interpreter._get_ops_details() if o["op_name"] == "FULLY_CONNECTED"
               and details[o["inputs"][1]]["dtype"] == np.int8]
    assert len(int8_fc) == 12  # the encoder's Dense layers (default selector); pooler and classifier stay float
    out = next(iter(interpreter.get_signature_runner()(**x).values()))
    np.testing.assert_allclose(out, A.run(qm, x), atol=1e-5)


def test_only_large_models_pay_for_collecting_between_passes(monkeypatch):
    """A full gc.collect costs ~0.25 s with TensorFlow loaded, 37 per export: tiny models skip it (their dead
    graph copies are small), large ones (MiniLM, 90 MB) collect before every tf2onnx pass."""
    model = models.build_model("tiny-bert")
    calls = []
    monkeypatch.setattr(export.gc, "collect", lambda *a, **k: calls.append(1) or 0)
    export.keras_to_onnx(model)
    assert calls == []
    monkeypatch.setattr(export, "COLLECT_ABOVE_BYTES", 0)
    export.keras_to_onnx(model)
    assert len(calls) >= 10  # one before each optimizer pass, one after the export
