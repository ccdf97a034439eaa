"""The TFLite interpreter as a deployment runtime (unicompress.deploy `tflite`): a Keras model's native
flatbuffer and its ONNX export, timed side by side against ONNX Runtime, with the same answers (real
converter, interpreter, tf2onnx and ONNX Runtime)."""
from __future__ import annotations

import numpy as np
import pytest
import tf_keras as keras
import tensorflow as tf

from unicompress.deploy import choose, compare_runtimes, get_runtime

from unicompress_tensorflow import export


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tflite")
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int64", name="input_ids")
    mask = keras.Input((None,), dtype="int64", name="attention_mask")
    h = keras.layers.Embedding(100, 16)(ids)
    h = h * tf.expand_dims(tf.cast(mask, tf.float32), -1)
    h = keras.layers.GlobalAveragePooling1D()(h)
    logits = keras.layers.Dense(5, name="logits")(keras.layers.Dense(32, activation="relu")(h))
    model = keras.Model([ids, mask], logits)
    onnx_path = d / "model.onnx"
    import onnx

    onnx.save(export.keras_to_onnx(model), str(onnx_path))
    tflite_path = d / "model.tflite"
    tflite_path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return onnx_path, tflite_path


def test_tflite_runtime_reads_the_native_file_by_input_names(files):
    onnx_path, tflite_path = files
    rt = get_runtime("tflite")
    assert rt.available() and rt.reads == (".tflite",) and rt.version() == tf.__version__
    model = rt.load(tflite_path, threads=1)
    assert sorted((s.name, s.type) for s in model.get_inputs()) == [("attention_mask", "tensor(int64)"),
                                                                    ("input_ids", "tensor(int64)")]
    assert all(s.shape == (None, None) for s in model.get_inputs())  # batch and length stay dynamic
    assert model.output_names() == ["logits"]


def test_tflite_and_onnx_runtime_agree_in_one_table(files):
    onnx_path, tflite_path = files
    rng = np.random.default_rng(0)
    x = {"input_ids": rng.integers(0, 100, (8, 12)).astype(np.int64), "attention_mask": np.ones((8, 12), np.int64)}
    table = compare_runtimes([onnx_path, tflite_path], ["onnxruntime", "tflite"], threads=1, runs=3, warmup=1,
                             inputs=x)
    assert [(r.runtime, r.file.rsplit("/", 1)[-1]) for r in table.rows] == [
        ("onnxruntime", "model.onnx"), ("tflite", "model.tflite")]
    assert table.notes == ["tflite does not read .onnx files: model.onnx left out for it",
                           "onnxruntime does not read .tflite files: model.tflite left out for it"]
    lite = table.rows[1]
    assert table.metric == "argmax" and lite.error is None and lite.max_abs < 1e-5 and lite.argmax_agreement == 1.0
    assert lite.speedup == pytest.approx(table.reference.median_ms / lite.median_ms)
    assert choose(table, 0.99).row in table.rows
