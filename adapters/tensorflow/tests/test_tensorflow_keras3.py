"""Keras 3 models (`import keras`, what TensorFlow users get by default) on the TensorFlow backend: rebuilt as
tf_keras where every layer has a tf_keras equivalent, refused by name (never with an empty layer list) else."""
from __future__ import annotations

import numpy as np
import pytest
from unicompress import zoo
from unicompress.api import compress

from unicompress_tensorflow import keras3, layers
from unicompress_tensorflow.backend import TensorFlowAdapter

keras = pytest.importorskip("keras")
A = TensorFlowAdapter()
CFG = zoo.config_for("tiny-bert")
X = zoo.inputs_for("tiny-bert", CFG)


def _functional():
    """A Keras 3 MHA encoder classifier: an op (x + constant, a cast of a slice) between layers."""
    ids = keras.Input((None,), dtype="int64", name="input_ids")
    mask = keras.Input((None,), dtype="int64", name="attention_mask")
    x = keras.layers.Embedding(CFG.vocab_size, 32, name="embed")(ids)
    x = x + np.random.default_rng(0).normal(size=(1, 16, 32)).astype("float32")
    attend = keras.ops.cast(mask[:, None, :], "bool")
    for i in range(2):
        a = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8, name=f"b{i}.mha")(x, x, attention_mask=attend)
        x = keras.layers.LayerNormalization(name=f"b{i}.ln1")(x + a)
        f = keras.layers.Dense(64, activation="gelu", name=f"b{i}.up")(x)
        f = keras.layers.Dense(32, name=f"b{i}.down")(keras.layers.Dropout(0.1)(f))
        x = keras.layers.LayerNormalization(name=f"b{i}.ln2")(keras.layers.Add()([x, f]))
    out = keras.layers.Dense(3, name="classifier")(keras.layers.GlobalAveragePooling1D()(x))
    return keras.Model({"input_ids": ids, "attention_mask": mask}, out)


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def test_import_keras_is_keras_3_while_tf_keras_is_keras_2():
    assert keras.__version__.startswith("3.")
    assert layers.tf.keras.__name__.startswith("tf_keras")  # the adapter's TF_USE_LEGACY_KERAS=1 holds
    assert keras3.is_keras3(_functional()) and not keras3.is_keras3(layers.keras.Sequential())


def test_keras_3_model_is_read_through_its_tf_keras_rebuild():
    model = _functional()
    assert A.is_model(model)
    st = A.structure(model)
    assert (len(st.attention), len(st.ffn), st.classifier, st.attention[0].num_heads) == (2, 2, "classifier", 4)
    roles = {i.name: i.role.value for i in A.layers(model)}
    assert (roles["b0.mha.query"], roles["b1.up"], roles["classifier"]) == ("query", "ffn_in", "classifier")
    copy = A.copy(model)
    assert type(copy).__module__.startswith("tf_keras")
    np.testing.assert_allclose(A.run(copy, X), np.asarray(model(X, training=False)), atol=1e-5)
    # weights written through the adapter land in the Keras 3 model itself
    A.set_weights(model, {"classifier": np.zeros((3, 32), np.float32)})
    assert not np.asarray(model.get_layer("classifier").kernel).any()
    assert not A.weights(model, ["classifier"])["classifier"].any()


def test_keras_3_model_is_compressed_as_tf_keras():
    model = _functional()
    result = compress(model, {"name": "k3", "backend": "tensorflow", "stages": [
        {"technique": "pruning", "sparsity": 0.5},
        {"technique": "pruning", "granularity": "head", "sparsity": 0.5, "remove_pruned": True}]},
        progress=False, export_example=X)
    assert type(result.model).__module__.startswith("tf_keras")
    assert all(c["passed"] for stage in result.report.stages for c in stage.checks)
    assert result.model.get_layer("b0.mha")._num_heads == 2
    assert float(np.mean(A.weights(result.model, ["b1.up"])["b1.up"] == 0)) == pytest.approx(0.5)


def test_keras_3_models_that_cannot_be_rebuilt_are_refused_by_name():
    sub = _Subclassed()
    sub(np.zeros((1, 3), np.float32))
    with pytest.raises(keras3.Keras3ModelError, match=r"Keras 3 model .*subclassed.*TF_USE_LEGACY_KERAS=1"):
        compress(sub, {"name": "k3", "backend": "tensorflow", "stages": [{"technique": "pruning", "sparsity": 0.5}]},
                 progress=False)

    class Scale(keras.layers.Layer):  # a custom Keras 3 layer: no tf_keras class of that name
        def call(self, x):
            return x * 2.0

    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Dense(2, name="d")(Scale(name="scale")(x)))
    with pytest.raises(keras3.Keras3ModelError, match="layer 'scale' .* has no tf_keras equivalent"):
        A.layers(model)
