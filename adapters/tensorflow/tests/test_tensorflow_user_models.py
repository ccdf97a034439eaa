"""User models: Sequential, functional with keras MultiHeadAttention, subclassed Transformer blocks."""
from __future__ import annotations

import numpy as np
import pytest
from unicompress.specs import PruningSpec

from unicompress_tensorflow import layers
from unicompress_tensorflow.backend import TensorFlowAdapter

keras = layers.keras
A = TensorFlowAdapter()


def _functional_mha():
    ids = keras.Input((None,), dtype="int64", name="input_ids")
    x = keras.layers.Embedding(50, 16, name="embed")(ids)
    a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, name="encoder.layer.0.attention")(x, x)
    x = keras.layers.LayerNormalization(name="encoder.layer.0.ln1")(x + a)
    f = keras.layers.Dense(32, activation="gelu", name="encoder.layer.0.intermediate.dense")(x)
    f = keras.layers.Dense(16, name="encoder.layer.0.output.dense")(f)
    x = keras.layers.LayerNormalization(name="encoder.layer.0.ln2")(x + f)
    out = keras.layers.Dense(3, name="classifier")(keras.layers.GlobalAveragePooling1D()(x))
    return keras.Model({"input_ids": ids}, out)


class Block(keras.layers.Layer):
    def __init__(self):
        super().__init__()
        self.attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
        self.norm = keras.layers.LayerNormalization()
        self.ffn = keras.layers.Dense(8)

    def call(self, x):
        return self.norm(x + self.ffn(self.attention(x, x)))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.embed = keras.layers.Embedding(20, 8)
        self.blocks = [Block(), Block()]
        self.classifier = keras.layers.Dense(2)

    def call(self, inputs):
        x = self.embed(inputs["input_ids"])
        for b in self.blocks:
            x = b(x)
        return self.classifier(x[:, 0])


X = {"input_ids": np.arange(12, dtype=np.int64).reshape(2, 6) % 20}


def test_functional_multi_head_attention_layers_and_structure():
    model = _functional_mha()
    infos = {i.name: i for i in A.layers(model)}
    q = infos["encoder.layer.0.attention.query"]
    assert (q.role.value, q.shape, q.block) == ("query", (16, 16), 0)  # EinsumDense [16, 2, 8] -> [out, in]
    assert infos["encoder.layer.0.attention.attention_output"].shape == (16, 16)
    s = A.structure(model)
    assert s.attention[0].num_heads == 2 and s.attention[0].head_dim == 8 and len(s.ffn) == 1
    w = A.weights(model, ["encoder.layer.0.attention.query"])["encoder.layer.0.attention.query"]
    kernel = model.get_layer("encoder.layer.0.attention")._query_dense.kernel.numpy()
    np.testing.assert_array_equal(w, kernel.reshape(16, 16).T)
    A.set_weights(model, {"encoder.layer.0.attention.query": np.zeros((16, 16), np.float32)})
    assert not model.get_layer("encoder.layer.0.attention")._query_dense.kernel.numpy().any()
    assert A.run(model, X).shape == (2, 3)


def test_functional_mha_model_prunes_its_dense_layers():
    model = _functional_mha()
    out = A.apply(A.copy(model), PruningSpec(sparsity=0.5, selector={"include": ["*.dense"]}))
    w = A.weights(out, ["encoder.layer.0.intermediate.dense"])["encoder.layer.0.intermediate.dense"]
    assert (w == 0).mean() == pytest.approx(0.5)


def test_sequential_model():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(12, name="hidden"), keras.layers.Dense(2)])
    out = A.apply(A.copy(model), PruningSpec(granularity="n_m", n=2, m=4))
    w = A.weights(out, ["hidden"])["hidden"]
    assert w.shape == (12, 8) and ((w != 0).reshape(12, 2, 4).sum(-1) == 2).all()
    assert A.run(out, np.ones((3, 8), np.float32)).shape == (3, 2)


def test_subclassed_model_layers_weights_and_copy():
    model = Subclassed()
    ref = A.run(model, X)
    names = [i.name for i in A.layers(model)]
    assert names == ["embed", "blocks.0.attention.query", "blocks.0.attention.key", "blocks.0.attention.value",
                     "blocks.0.attention.attention_output", "blocks.0.ffn", "blocks.1.attention.query",
                     "blocks.1.attention.key", "blocks.1.attention.value", "blocks.1.attention.attention_output",
                     "blocks.1.ffn", "classifier"]
    assert [i.block for i in A.layers(model)][1:6] == [0] * 5
    clone = A.copy(model)
    np.testing.assert_allclose(A.run(clone, X), ref, atol=1e-6)
    A.set_weights(clone, {"classifier": np.zeros((2, 8), np.float32)})
    assert not A.weights(clone, ["classifier"])["classifier"].any()
    assert A.weights(model, ["classifier"])["classifier"].any()  # the copy is independent
    with pytest.raises(Exception, match="functional or Sequential"):
        A.apply(A.copy(model), PruningSpec(sparsity=0.5))


@pytest.mark.parametrize("build", [_functional_mha, Subclassed], ids=["functional-mha", "subclassed"])
def test_describe_and_layers_read_the_kernels_in_place_and_agree_with_the_weights(build):
    """layers()/describe() take shapes and non-zeros from the variables without copying them; they must give
    what the neutral-layout copies of get_weights give (EinsumDense, Embedding, Dense)."""
    model = build()
    model(X)
    weights = A.weights(model)
    weights = {n: np.where(np.abs(w) < np.median(np.abs(w)), 0.0, w).astype(np.float32) for n, w in weights.items()}
    A.set_weights(model, weights)
    stats = {s.name: s for s in A.describe(model)}
    assert set(stats) == set(weights) and {i.name for i in A.layers(model)} == set(weights)
    for info in A.layers(model):
        w = weights[info.name]
        assert info.shape == w.shape == stats[info.name].shape
        assert (stats[info.name].params, stats[info.name].nonzero) == (w.size, int(np.count_nonzero(w)))
        assert 0 < stats[info.name].nonzero < w.size
