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
