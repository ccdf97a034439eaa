"""The zoo models (unicompress.zoo) built from tf_keras layers, as functional models.

Why functional and why Dense for Q/K/V/O: TFMOT's `prune_low_magnitude` and `quantize_model` clone
functional/Sequential models layer by layer, so every weight-carrying projection is a top-level
`Dense` named with the neutral Hugging Face module name ("bert.encoder.layer.0.attention.self.query").
The weight-free pieces (position ids, additive mask, scaled dot-product attention) are small custom
layers so the graph holds no anonymous TFOpLambda layers that TFMOT would refuse.
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

import math  # noqa: E402
from typing import Any, Optional  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from unicompress import zoo  # noqa: E402
from unicompress.zoo import bert as zbert  # noqa: E402
from unicompress.zoo import vit as zvit  # noqa: E402

_PKG = "unicompress"


@keras.utils.register_keras_serializable(_PKG)
class PositionIds(keras.layers.Layer):
    """[B, L] token ids -> [1, L] positions 0..L-1 (int32)."""

    def call(self, input_ids):
        return tf.expand_dims(tf.range(tf.shape(input_ids)[1]), 0)


@keras.utils.register_keras_serializable(_PKG)
class ZeroTokenTypes(keras.layers.Layer):
    """[B, L] token ids -> [B, L] zeros: every token is of type 0 (the zoo's semantics)."""

    def call(self, input_ids):
        return tf.zeros_like(input_ids, dtype=tf.int32)


@keras.utils.register_keras_serializable(_PKG)
class AdditiveMask(keras.layers.Layer):
    """[B, L] 0/1 attention mask -> [B, 1, 1, L] additive bias (0 kept, -1e9 padded)."""

    def call(self, mask):
        mask = tf.cast(mask, self.compute_dtype)
        # expand_dims, not [:, None, None, :]: TFLite has no builtin strided slice with new axes
        return tf.expand_dims(tf.expand_dims((1.0 - mask) * -1e9, 1), 1)


@keras.utils.register_keras_serializable(_PKG)
class ScaledDotProductAttention(keras.layers.Layer):
    """softmax(q k^T / sqrt(d) + bias) v per head; inputs [q, k, v] or [q, k, v, bias], all [B, L, heads*d].

    `num_heads` is a config field so head pruning can rebuild the layer with fewer heads.
    """

    def __init__(self, num_heads: int, head_dim: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.head_dim = int(head_dim)

    @staticmethod
    def _length(x):
        # the static length when known: tf2onnx's optimizer mis-folds a Shape taken after Dense's
        # Tensordot reshape (ViT export failed with shape {B*L, H} -> {B*L, H, heads, d})
        return x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]

    def _split(self, x):
        return tf.transpose(tf.reshape(x, [-1, self._length(x), self.num_heads, self.head_dim]), [0, 2, 1, 3])

    def scores(self, q, k, bias=None):
        """Attention probabilities [B, heads, L, L] (used by relation distillation)."""
        s = tf.matmul(self._split(q), self._split(k), transpose_b=True) / math.sqrt(self.head_dim)
        if bias is not None:
            s = s + bias
        return tf.nn.softmax(s, axis=-1)

    def call(self, inputs):
        q, k, v = inputs[:3]
        bias = inputs[3] if len(inputs) > 3 else None
        p = self.scores(q, k, bias)
        ctx = tf.matmul(p, self._split(v))
        return tf.reshape(tf.transpose(ctx, [0, 2, 1, 3]), [-1, self._length(q), self.num_heads * self.head_dim])

    def get_config(self) -> dict:
        return {**super().get_config(), "num_heads": self.num_heads, "head_dim": self.head_dim}


@keras.utils.register_keras_serializable(_PKG)
class FirstToken(keras.layers.Layer):
    """[B, L, H] -> [B, H]: the first ([CLS]) position."""

    def call(self, x):
        return x[:, 0]


@keras.utils.register_keras_serializable(_PKG)
class Patchify(keras.layers.Layer):
    """[B, S, S] image -> [B, (S/p)^2, p*p] row-major patches, each flattened row-major."""

    def __init__(self, patch_size: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)

    def call(self, x):
        p = self.patch_size
        s = x.shape[1]
        n = s // p
        x = tf.reshape(x, [-1, n, p, n, p])
        x = tf.transpose(x, [0, 1, 3, 2, 4])
        return tf.reshape(x, [-1, n * n, p * p])

    def get_config(self) -> dict:
        return {**super().get_config(), "patch_size": self.patch_size}


@keras.utils.register_keras_serializable(_PKG)
class ClsAndPositions(keras.layers.Layer):
    """ViT embeddings: prepend the learned [CLS] vector, add learned position embeddings."""

    def __init__(self, num_positions: int, hidden_size: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_positions = int(num_positions)
        self.hidden_size = int(hidden_size)

    def build(self, input_shape):
        self.cls_token = self.add_weight("cls_token", (1, 1, self.hidden_size), initializer="zeros")
        self.position_embeddings = self.add_weight("position_embeddings", (1, self.num_positions, self.hidden_size),
                                                   initializer="zeros")
        super().build(input_shape)

    def call(self, x):
        cls = tf.tile(self.cls_token, [tf.shape(x)[0], 1, 1])
        return tf.concat([cls, x], axis=1) + self.position_embeddings

    def get_config(self) -> dict:
        return {**super().get_config(), "num_positions": self.num_positions, "hidden_size": self.hidden_size}


@keras.utils.register_keras_serializable(_PKG)
class ConstantTensor(keras.layers.Layer):
    """A constant of the graph (e.g. a position table added with TF ops) held as a non-trainable weight.

    Keras writes a constant argument of a call into the model config as nested Python lists; a config round
    trip (`clone_model`, TFMOT's `quantize_apply`) then passes lists, not a tensor, and TFMOT's graph
    transformer fails on them (`graph.replay(..., lift_constants=True)` puts this layer in their place).
    It takes any tensor of the graph (to be connected) and returns the constant.
    """

    def __init__(self, shape, value_dtype: str = "float32", value: Optional[np.ndarray] = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.value_shape, self.value_dtype = [int(d) for d in shape], str(value_dtype)
        self._initial = value

    def build(self, input_shape):
        init = keras.initializers.Constant(self._initial) if self._initial is not None else "zeros"
        self.value = self.add_weight("value", self.value_shape, dtype=self.value_dtype, initializer=init,
                                     trainable=False)
        self._initial = None
        super().build(input_shape)

    def call(self, anchor):
        return tf.identity(self.value)

    def get_config(self) -> dict:
        return {**super().get_config(), "shape": self.value_shape, "value_dtype": self.value_dtype}


def custom_objects() -> dict[str, type]:
    """The custom layers of the zoo models (for clone/from_config outside the registered scope)."""
    return {c.__name__: c for c in (PositionIds, ZeroTokenTypes, AdditiveMask, ScaledDotProductAttention,
                                    FirstToken, Patchify, ClsAndPositions, FactorizedDense, ConstantTensor)}


def _gelu(name: str) -> keras.layers.Layer:
    # gelu with approximate=False is the erf form the zoo specifies.
    return keras.layers.Activation(keras.activations.gelu, name=name)


def _dense(units: int, name: str, activation: Optional[str] = None) -> keras.layers.Dense:
    return keras.layers.Dense(units, activation=activation, name=name)


def _attention(x, p: str, heads: int, head_dim: int, bias=None):
    """Q/K/V Dense -> scaled dot-product attention -> output Dense, named as the zoo names them."""
    h = heads * head_dim
    q, k, v = (_dense(h, f"{p}.attention.self.{n}")(x) for n in ("query", "key", "value"))
    inputs = [q, k, v] if bias is None else [q, k, v, bias]
    a = ScaledDotProductAttention(heads, head_dim, name=f"{p}.attention.self")(inputs)
    return _dense(h, f"{p}.attention.output.dense")(a)


def _ffn(x, p: str, intermediate: int, hidden: int):
    """Dense -> exact GELU -> Dense."""
    f = _gelu(f"{p}.intermediate.intermediate_act_fn")(_dense(intermediate, f"{p}.intermediate.dense")(x))
    return _dense(hidden, f"{p}.output.dense")(f)


def build_bert(cfg: zbert.BertConfig) -> keras.Model:
    """A functional BERT encoder + pooler + classifier following unicompress/zoo/bert.py."""
    h, heads, eps = cfg.hidden_size, cfg.num_attention_heads, cfg.layer_norm_eps
    ids = keras.Input((None,), dtype=tf.int64, name="input_ids")
    mask = keras.Input((None,), dtype=tf.int64, name="attention_mask")
    e = "bert.embeddings"
    word = keras.layers.Embedding(cfg.vocab_size, h, name=f"{e}.word_embeddings")(ids)
    pos = keras.layers.Embedding(cfg.max_position_embeddings, h, name=f"{e}.position_embeddings")(
        PositionIds(name=f"{e}.position_ids")(ids))
    typ = keras.layers.Embedding(cfg.type_vocab_size, h, name=f"{e}.token_type_embeddings")(
        ZeroTokenTypes(name=f"{e}.token_type_ids")(ids))
    x = keras.layers.Add(name=f"{e}.sum")([word, pos, typ])
    x = keras.layers.LayerNormalization(epsilon=eps, name=f"{e}.LayerNorm")(x)
    bias = AdditiveMask(name="bert.extended_attention_mask")(mask)
    for i in range(cfg.num_hidden_layers):
        p = zbert.layer_prefix(i)
        a = _attention(x, p, heads, cfg.head_dim, bias)
        x = keras.layers.Add(name=f"{p}.attention.output.residual")([a, x])
        x = keras.layers.LayerNormalization(epsilon=eps, name=f"{p}.attention.output.LayerNorm")(x)
        x = keras.layers.Add(name=f"{p}.output.residual")([_ffn(x, p, cfg.intermediate_size, h), x])
        x = keras.layers.LayerNormalization(epsilon=eps, name=f"{p}.output.LayerNorm")(x)
    pooled = _dense(h, "bert.pooler.dense", activation="tanh")(FirstToken(name="bert.pooler.first_token")(x))
    logits = _dense(cfg.num_labels, "classifier")(pooled)
    return keras.Model({"input_ids": ids, "attention_mask": mask}, logits, name="bert")


def build_vit(cfg: zvit.ViTConfig) -> keras.Model:
    """A functional pre-LN ViT following unicompress/zoo/vit.py (patches projected by a Dense)."""
    h, heads, eps = cfg.hidden_size, cfg.num_attention_heads, cfg.layer_norm_eps
    pix = keras.Input((cfg.image_size, cfg.image_size), dtype=tf.float32, name="pixel_values")
    x = Patchify(cfg.patch_size, name="vit.embeddings.patchify")(pix)
    x = _dense(h, "vit.embeddings.patch_embeddings")(x)
    x = ClsAndPositions(cfg.num_patches + 1, h, name="vit.embeddings")(x)
    for i in range(cfg.num_hidden_layers):
        p = f"vit.encoder.layer.{i}"
        y = keras.layers.LayerNormalization(epsilon=eps, name=f"{p}.layernorm_before")(x)
        x = keras.layers.Add(name=f"{p}.attention.residual")([x, _attention(y, p, heads, cfg.head_dim)])
        y = keras.layers.LayerNormalization(epsilon=eps, name=f"{p}.layernorm_after")(x)
        x = keras.layers.Add(name=f"{p}.output.residual")([x, _ffn(y, p, cfg.intermediate_size, h)])
    x = keras.layers.LayerNormalization(epsilon=eps, name="vit.layernorm")(x)
    logits = _dense(cfg.num_labels, "classifier")(FirstToken(name="vit.first_token")(x))
    return keras.Model({"pixel_values": pix}, logits, name="vit")


def load_neutral(model: keras.Model, weights: dict[str, np.ndarray]) -> None:
    """Copy neutral (HF-named, [out, in]) arrays into the layers of a zoo model; every array must land."""
    used: set[str] = set()
    for layer in model.layers:
        name = layer.name
        if isinstance(layer, keras.layers.Dense):
            layer.set_weights([weights[f"{name}.weight"].T, weights[f"{name}.bias"]])
            used |= {f"{name}.weight", f"{name}.bias"}
        elif isinstance(layer, keras.layers.LayerNormalization):
            layer.set_weights([weights[f"{name}.weight"], weights[f"{name}.bias"]])
            used |= {f"{name}.weight", f"{name}.bias"}
        elif isinstance(layer, keras.layers.Embedding):
            layer.set_weights([weights[f"{name}.weight"]])
            used.add(f"{name}.weight")
        elif isinstance(layer, ClsAndPositions):
            layer.set_weights([weights[f"{name}.cls_token"], weights[f"{name}.position_embeddings"]])
            used |= {f"{name}.cls_token", f"{name}.position_embeddings"}
    missing = set(weights) - used
    if missing:
        raise KeyError(f"weights not used by the model: {sorted(missing)[:5]}")


def neutral_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """Every weight of a zoo model under its neutral name and layout (the inverse of `load_neutral`)."""
    out: dict[str, np.ndarray] = {}
    for layer in model.layers:
        name, values = layer.name, [np.asarray(v, dtype=np.float32) for v in layer.get_weights()]
        if isinstance(layer, keras.layers.Dense):
            out[f"{name}.weight"], out[f"{name}.bias"] = values[0].T.copy(), values[1]
        elif isinstance(layer, keras.layers.LayerNormalization):
            out[f"{name}.weight"], out[f"{name}.bias"] = values
        elif isinstance(layer, keras.layers.Embedding):
            out[f"{name}.weight"] = values[0]
        elif isinstance(layer, ClsAndPositions):
            out[f"{name}.cls_token"], out[f"{name}.position_embeddings"] = values
        elif values:
            raise TypeError(f"layer {name!r} ({type(layer).__name__}) holds weights but is no zoo layer: "
                            "neutral weights exist for the uncompressed zoo architecture only")
    return out


USER_ENCODER = {"hidden": 32, "heads": 4, "ffn": 64, "blocks": 2}


def build_user_encoder(seed: int = 0, num_labels: Optional[int] = None) -> keras.Model:
    """The "user-encoder": a tf_keras functional classifier as a user writes it, not in the zoo's layout.

    Token embedding plus a constant sinusoid position table added in the graph (a TFOpLambda), post-LN blocks of
    keras MultiHeadAttention (4 heads, self-attention, the padding mask as a [B, 1, L] boolean), a Dense(64, gelu)
    -> Dropout -> Dense(32) FFN, each with a residual and LayerNormalization, then a masked mean pool, a Dense
    pooler (tanh) and the Dense head. tiny-bert's vocabulary and inputs (input_ids, attention_mask); random
    weights from `seed` (each output unit its own scale, so head and neuron scores do not tie). Layer names are
    the user's (``enc0.mha``, ``enc0.ffn_up``, ``head``): discovery must find the structure from the types.
    """
    cfg = zoo.config_for("tiny-bert", num_labels)
    h, heads, width, blocks = (USER_ENCODER[k] for k in ("hidden", "heads", "ffn", "blocks"))
    rng = np.random.default_rng(seed)
    ids = keras.Input((None,), dtype=tf.int64, name="input_ids")
    mask = keras.Input((None,), dtype=tf.int64, name="attention_mask")
    position = np.arange(cfg.max_position_embeddings)[:, None] / 10000 ** (np.arange(0, h, 2)[None] / h)
    table = tf.constant(np.concatenate([np.sin(position), np.cos(position)], 1).astype(np.float32))
    x = keras.layers.Embedding(cfg.vocab_size, h, name="embedding")(ids)
    x = x + tf.gather(table, tf.range(tf.shape(ids)[1]))  # the constant table, sliced to the length
    keep = tf.cast(mask, tf.bool)
    attend = tf.expand_dims(keep, 1)  # [B, 1, L]: every query sees the unpadded keys
    for i in range(blocks):
        a = keras.layers.MultiHeadAttention(heads, h // heads, name=f"enc{i}.mha")(x, x, attention_mask=attend)
        x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"enc{i}.mha_norm")(x + a)
        f = keras.layers.Dense(width, activation="gelu", name=f"enc{i}.ffn_up")(x)
        f = keras.layers.Dense(h, name=f"enc{i}.ffn_down")(keras.layers.Dropout(0.0, name=f"enc{i}.ffn_drop")(f))
        x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"enc{i}.ffn_norm")(x + f)
    pooled = keras.layers.GlobalAveragePooling1D(name="mean_pool")(x, mask=keep)
    pooled = keras.layers.Dense(h, activation="tanh", name="pool")(pooled)
    logits = keras.layers.Dense(cfg.num_labels, name="head")(pooled)
    model = keras.Model({"input_ids": ids, "attention_mask": mask}, logits, name="user_encoder")
    _random_user_weights(model, rng)
    return model


def _random_user_weights(model: keras.Model, rng: np.random.Generator) -> None:
    """Kernels N(0, 1/fan_in) times a per-output-unit scale in [0.5, 1.5], biases N(0, 0.02), embeddings
    N(0, 1), LayerNorm 1/0."""
    for var in model.weights:
        shape, name = tuple(var.shape), var.name
        if "norm" in name:
            value = np.ones(shape) if "gamma" in name else np.zeros(shape)
        elif "embeddings" in name:
            value = rng.normal(0.0, 1.0, shape)
        elif "kernel" in name:
            fan_in = shape[0] if "attention_output" not in name else shape[0] * shape[1]
            units = shape[1:] if "attention_output" not in name else shape[2:]
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape) * rng.uniform(0.5, 1.5, (1,) * (len(shape) -
                                                                                             len(units)) + units)
        else:
            value = rng.normal(0.0, 0.02, shape)
        var.assign(value.astype(np.float32))


def build_model(zoo_name: str, seed: int = 0, num_labels: Optional[int] = None,
                weights: Optional[dict[str, np.ndarray]] = None) -> keras.Model:
    """Build a zoo model ("tiny-bert", "tiny-vit", "minilm-l6") with the neutral weights loaded, or the
    "user-encoder" (`build_user_encoder`: random weights from `seed`, it has no neutral weights).

    Example: ``build_model("tiny-bert")`` gives the same logits as every other backend's tiny-bert.
    """
    if zoo_name == "user-encoder":
        if weights is not None:
            raise ValueError("build_model('user-encoder') takes no weights=: it is a user's tf_keras "
                             "MultiHeadAttention classifier with random weights from `seed`, not a zoo architecture "
                             "with neutral names")
        return build_user_encoder(seed, num_labels)
    cfg = zoo.config_for(zoo_name, num_labels)
    model = build_vit(cfg) if zoo_name == "tiny-vit" else build_bert(cfg)
    load_neutral(model, weights if weights is not None else zoo.weights_for(zoo_name, cfg, seed))
    return model


@keras.utils.register_keras_serializable(_PKG)
class FactorizedDense(keras.layers.Layer):
    """A Dense replaced by its low-rank factors: Dense(in -> rank, no bias) then Dense(rank -> out, bias).

    The sub-layers are named "<name>.0" and "<name>.1" (first [rank, in], second [out, rank]).
    """

    def __init__(self, units: int, rank: int, activation: Optional[str] = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.units, self.rank = int(units), int(rank)
        self.activation = keras.activations.get(activation)
        self.first = keras.layers.Dense(self.rank, use_bias=False, name=f"{self.name}.0")
        self.second = keras.layers.Dense(self.units, name=f"{self.name}.1")

    def build(self, input_shape):
        self.first.build(input_shape)
        self.second.build(tuple(input_shape[:-1]) + (self.rank,))
        super().build(input_shape)

    def call(self, x):
        # both factors on the flattened [N, in] input, back to back: the exported graph then holds the
        # MatMul(in->r) -> MatMul(r->out) pair itself (two Dense calls put Tensordot reshapes in between)
        flat = tf.reshape(x, [-1, tf.shape(x)[-1]])
        y = tf.matmul(tf.matmul(flat, self.first.kernel), self.second.kernel) + self.second.bias
        return self.activation(tf.reshape(y, tf.concat([tf.shape(x)[:-1], [self.units]], 0)))

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "rank": self.rank,
                "activation": keras.activations.serialize(self.activation)}
