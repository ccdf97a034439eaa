"""Models that keras.models.clone_model cannot rebuild: a tf.constant in the graph (an Add of a constant
position table, a gather from it) and Lambda layers (a lambda and a named function using module globals)."""
from __future__ import annotations

import numpy as np
import pytest
from unicompress.api import compress
from unicompress.backend import TaskData

from unicompress_tensorflow import graph, layers
from unicompress_tensorflow.backend import TensorFlowAdapter

keras = layers.keras
tf = layers.tf
A = TensorFlowAdapter()
SCALE = 0.5  # a module global the Lambda functions read (a bytecode round trip would not find it)
X = {"input_ids": np.arange(12, dtype=np.int64).reshape(2, 6) % 50}


def halve(t):
    return t * SCALE


def _model():
    table = np.random.default_rng(0).normal(size=(1, 6, 16)).astype(np.float32)
    ids = keras.Input((6,), dtype="int64", name="input_ids")
    x = keras.layers.Embedding(50, 16, name="embed")(ids)
    x = keras.layers.Add(name="add_position")([x, tf.constant(table)])
    x = keras.layers.Lambda(lambda t: t * SCALE + 1.0, name="shift")(x)
    x = keras.layers.Lambda(halve, name="halve")(x)
    a = keras.layers.MultiHeadAttention(2, 8, name="mha")(x, x)
    x = keras.layers.LayerNormalization(name="ln")(x + a)
    f = keras.layers.Dense(16, name="down")(keras.layers.Dense(32, activation="relu", name="up")(x))
    x = keras.layers.LayerNormalization(name="ln2")(x + f)
    out = keras.layers.Dense(3, name="cls")(keras.layers.GlobalAveragePooling1D(name="pool")(x))
    return keras.Model({"input_ids": ids}, out)


def test_keras_clone_model_fails_where_copy_rebuilds_the_graph():
    model = _model()
    with pytest.raises(TypeError, match="unhashable"):
        keras.models.clone_model(model)  # the constant comes back from the config as nested lists
    copy = A.copy(model)
    np.testing.assert_array_equal(A.run(copy, X), A.run(model, X))
    assert copy.get_layer("halve").function is halve  # the function object itself, not reloaded bytecode
    A.set_weights(copy, {"cls": np.zeros((3, 16), np.float32)})
    assert A.weights(model, ["cls"])["cls"].any()  # the copy has its own variables


def test_head_removal_and_quantization_on_a_model_with_constants_and_lambdas():
    model = _model()
    data = TaskData(train=lambda: iter([(X, np.array([0, 1]))]), num_labels=3)
    removed = compress(model, {"name": "h", "backend": "tensorflow", "stages": [
        {"technique": "pruning", "granularity": "head", "sparsity": 0.5, "remove_pruned": True}]}, data,
        progress=False)
    assert {c["name"]: c["passed"] for c in removed.report.stages[0].checks}["removed equals masked"]
    assert removed.model.get_layer("mha")._num_heads == 1
    quantized = compress(model, {"name": "q", "backend": "tensorflow", "stages": [
        {"technique": "quantization", "mode": "weight_only"}]}, data, progress=False).model
    assert set(A.quantized_weights(quantized)) == {"mha.query", "mha.key", "mha.value", "mha.attention_output",
                                                   "up", "down"}
    lam = [layer for layer in quantized.layers if layer.name == "halve"]
    assert lam and layers.unwrap(lam[0]).function is halve  # TFMOT's round trip got the same function back
    rel = np.linalg.norm(A.run(quantized, X) - A.run(model, X)) / np.linalg.norm(A.run(model, X))
    assert 0 < rel < 0.05


def test_bytecode_lambdas_need_the_explicit_opt_in(monkeypatch):
    """Where Keras itself must load a Lambda's bytecode (a config made outside unicompress), the error names
    the opt-in, and the opt-in makes Keras load it."""
    ids = keras.Input((4,), name="x")
    model = keras.Model(ids, keras.layers.Lambda(lambda t: t + 1.0, name="plus")(ids))
    config = model.get_config()  # the lambda as marshalled bytecode
    monkeypatch.delenv(graph.UNSAFE_ENV, raising=False)
    with pytest.raises(graph.GraphRebuildError, match=graph.UNSAFE_ENV + "=1"):
        with graph.in_memory_lambdas(model):
            keras.Model.from_config(config)
    monkeypatch.setenv(graph.UNSAFE_ENV, "1")
    with graph.in_memory_lambdas(model):
        loaded = keras.Model.from_config(config)
    np.testing.assert_allclose(loaded(np.zeros((1, 4), np.float32)).numpy(), np.ones((1, 4)))
