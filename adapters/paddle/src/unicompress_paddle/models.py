"""The zoo models (unicompress.zoo) built from paddle.nn layers, with the neutral HF-style names.

Sublayer names equal the neutral names (``bert.encoder.layer.0.attention.self.query``), so a state_dict
key is the neutral weight name. Paddle's Linear stores its weight [in, out]; the neutral layout is
[out, in], so weights are transposed on the way in and out (`load_neutral_weights`, `neutral_weights`).
Semantics follow unicompress/zoo/bert.py and vit.py exactly: post-LN BERT with erf GELU, additive
attention mask, tanh pooler; pre-LN ViT whose 7x7 patches are flattened row-major and projected.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from .compat import paddle

nn = paddle.nn
F = paddle.nn.functional

MASK_VALUE = -1e9  # additive mask of padded keys (zoo/bert.py)


class SelfAttention(nn.Layer):
    """Q, K, V projections and scaled dot-product attention over `num_heads` heads of `head_dim`.

    `num_heads` may shrink after head pruning (the projections then hold fewer rows); with zero
    heads left the block contributes only the output projection's bias.
    """

    def __init__(self, hidden: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        width = num_heads * head_dim
        self.query = nn.Linear(hidden, width)
        self.key = nn.Linear(hidden, width)
        self.value = nn.Linear(hidden, width)
        self.record = False  # relation distillation reads the last probabilities and values
        self.last_probs = self.last_values = self.last_queries = self.last_keys = None

    def _heads(self, x):
        return paddle.reshape(x, [0, 0, self.num_heads, self.head_dim]).transpose([0, 2, 1, 3])

    def forward(self, x, mask_add=None):
        if self.num_heads == 0:
            return paddle.zeros_like(x)[:, :, :0]
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = paddle.matmul(q, k, transpose_y=True) / math.sqrt(self.head_dim)
        if mask_add is not None:
            scores = scores + mask_add
        probs = F.softmax(scores, axis=-1)
        if self.record:
            self.last_probs, self.last_values, self.last_queries, self.last_keys = probs, v, q, k
        ctx = paddle.matmul(probs, v).transpose([0, 2, 1, 3])
        return paddle.reshape(ctx, [0, 0, self.num_heads * self.head_dim])


class _Dense(nn.Layer):
    """A Linear (`dense`), optionally followed by residual + LayerNorm (BERT's *Output blocks)."""

    def __init__(self, n_in: int, n_out: int, eps: Optional[float] = None):
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(n_out, epsilon=eps)

    def forward(self, x, residual=None):
        y = self.dense(x)
        if residual is not None:
            y = self.LayerNorm(y + residual)
        return y


class _Attention(nn.Layer):
    def __init__(self, hidden: int, heads: int, head_dim: int, eps: Optional[float]):
        super().__init__()
        self.add_sublayer("self", SelfAttention(hidden, heads, head_dim))
        self.output = _Dense(heads * head_dim, hidden, eps)


class BertLayer(nn.Layer):
    """One post-LN encoder block: x = LN(x + Attn(x)); x = LN(x + W2 gelu(W1 x))."""

    def __init__(self, cfg):
        super().__init__()
        eps = cfg.layer_norm_eps
        self.attention = _Attention(cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, eps)
        self.intermediate = _Dense(cfg.hidden_size, cfg.intermediate_size)
        self.output = _Dense(cfg.intermediate_size, cfg.hidden_size, eps)

    def forward(self, x, mask_add):
        att = self.attention
        a = getattr(att, "self")(x, mask_add)
        x = att.output(a, residual=x)
        h = F.gelu(self.intermediate(x), approximate=False)
        return self.output(h, residual=x)


class BertEmbeddings(nn.Layer):
    def __init__(self, cfg):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps)

    def forward(self, input_ids, token_type_ids=None):
        # paddle.shape keeps the sequence length dynamic under paddle.jit (ONNX export)
        pos = paddle.arange(0, paddle.shape(input_ids)[1], dtype="int64")
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos).unsqueeze(0)
        if token_type_ids is None:
            token_type_ids = paddle.zeros_like(input_ids)
        x = x + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x)


class _Encoder(nn.Layer):
    def __init__(self, layers):
        super().__init__()
        self.layer = nn.LayerList(layers)


class _Pooler(nn.Layer):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)


class _Bert(nn.Layer):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = _Encoder([BertLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.pooler = _Pooler(cfg.hidden_size)


class BertForSequenceClassification(nn.Layer):
    """BERT encoder + tanh pooler + classifier; forward(input_ids, attention_mask, token_type_ids) -> logits."""

    input_names = ("input_ids", "attention_mask")

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.zoo_family = "bert"
        self.bert = _Bert(cfg)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)

    def features(self, input_ids, attention_mask=None, token_type_ids=None) -> dict:
        """Logits plus the hidden state after the embeddings and after every block."""
        if attention_mask is None:
            attention_mask = paddle.ones_like(input_ids)
        mask_add = ((1.0 - attention_mask.astype("float32")) * MASK_VALUE).unsqueeze([1, 2])
        x = self.bert.embeddings(input_ids, token_type_ids)
        hidden = [x]
        for block in self.bert.encoder.layer:
            x = block(x, mask_add)
            hidden.append(x)
        pooled = paddle.tanh(self.bert.pooler.dense(x[:, 0]))
        return {"logits": self.classifier(pooled), "hidden_states": hidden}

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.features(input_ids, attention_mask, token_type_ids)["logits"]


class ViTLayer(nn.Layer):
    """One pre-LN block: x = x + Attn(LN1 x) Wo^T; x = x + W2 gelu(W1 LN2 x)."""

    def __init__(self, cfg):
        super().__init__()
        h = cfg.hidden_size
        self.layernorm_before = nn.LayerNorm(h, epsilon=cfg.layer_norm_eps)
        self.attention = _Attention(h, cfg.num_attention_heads, cfg.head_dim, None)
        self.layernorm_after = nn.LayerNorm(h, epsilon=cfg.layer_norm_eps)
        self.intermediate = _Dense(h, cfg.intermediate_size)
        self.output = _Dense(cfg.intermediate_size, h)

    def forward(self, x, mask_add=None):
        att = self.attention
        x = x + att.output(getattr(att, "self")(self.layernorm_before(x)))
        return x + self.output(F.gelu(self.intermediate(self.layernorm_after(x)), approximate=False))


class ViTEmbeddings(nn.Layer):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.patch_embeddings = nn.Linear(cfg.patch_size ** 2, h)
        self.cls_token = self.create_parameter([1, 1, h], default_initializer=nn.initializer.Constant(0.0))
        self.position_embeddings = self.create_parameter([1, cfg.num_patches + 1, h],
                                                         default_initializer=nn.initializer.Constant(0.0))

    def forward(self, pixel_values):
        p, n = self.cfg.patch_size, self.cfg.image_size // self.cfg.patch_size
        x = paddle.reshape(pixel_values, [-1, n, p, n, p]).transpose([0, 1, 3, 2, 4])
        x = self.patch_embeddings(paddle.reshape(x, [-1, n * n, p * p]))
        cls = self.cls_token + paddle.zeros_like(x[:, :1, :])  # broadcast to the (dynamic) batch
        return paddle.concat([cls, x], axis=1) + self.position_embeddings


class _ViT(nn.Layer):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = ViTEmbeddings(cfg)
        self.encoder = _Encoder([ViTLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps)


class ViTForImageClassification(nn.Layer):
    """The zoo ViT: forward(pixel_values [B, 28, 28]) -> logits."""

    input_names = ("pixel_values",)

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.zoo_family = "vit"
        self.vit = _ViT(cfg)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)

    def features(self, pixel_values) -> dict:
        x = self.vit.embeddings(pixel_values)
        hidden = [x]
        for block in self.vit.encoder.layer:
            x = block(x)
            hidden.append(x)
        return {"logits": self.classifier(self.vit.layernorm(x)[:, 0]), "hidden_states": hidden}

    def forward(self, pixel_values):
        return self.features(pixel_values)["logits"]


def _is_block(layer: Any) -> bool:
    """A Transformer block: a layer holding an attention (Paddle's MultiHeadAttention or the zoo's)."""
    return any(isinstance(sub, (nn.MultiHeadAttention, SelfAttention)) for sub in layer.sublayers(include_self=True))


def block_list(model: Any) -> tuple[Any, str, Any]:
    """(owner, attribute, LayerList) of the model's Transformer blocks: the one `nn.LayerList` whose items all
    hold an attention (zoo: ``bert.encoder.layer``; `nn.TransformerEncoder`: ``encoder.layers``).

    Raises StructureError when there is none, or several (an encoder-decoder: which stack is meant is unknown).
    """
    from unicompress.errors import StructureError

    found = [(name, owner, attr, child) for name, owner in model.named_sublayers(include_self=True)
             for attr, child in owner.named_children()
             if isinstance(child, nn.LayerList) and len(child) and all(_is_block(b) for b in child)]
    if len(found) != 1:
        where = ", ".join(f"{n + '.' if n else ''}{a} ({len(c)} blocks)" for n, _, a, c in found) or "none"
        raise StructureError(
            f"{type(model).__name__}: layer dropping and feature distillation need ONE nn.LayerList of Transformer "
            f"blocks (layers holding an nn.MultiHeadAttention, e.g. nn.TransformerEncoder.layers); found {where}")
    _, owner, attr, blocks = found[0]
    return owner, attr, blocks


def encoder_blocks(model: Any) -> Any:
    """The LayerList of Transformer blocks of a model (a zoo model, or any model with one `block_list`)."""
    family = getattr(model, "zoo_family", None)
    if family is not None:
        return (model.bert if family == "bert" else model.vit).encoder.layer
    return block_list(model)[2]


def _linear_sublayers(model: Any) -> dict[str, Any]:
    return {name: layer for name, layer in model.named_sublayers() if isinstance(layer, nn.Linear)}


def load_neutral_weights(model: Any, weights: dict[str, np.ndarray], strict: bool = True) -> None:
    """Copy neutral numpy weights (HF names, Linear [out, in]) into the model's parameters."""
    params = dict(model.named_parameters())
    linears = {f"{n}.weight" for n in _linear_sublayers(model)}
    missing = set(params) - set(weights)
    unknown = set(weights) - set(params)
    if strict and (missing or unknown):
        raise KeyError(f"weights do not fit the model: missing {sorted(missing)[:5]}, unknown {sorted(unknown)[:5]}")
    for name, value in weights.items():
        if name not in params:
            continue
        arr = np.asarray(value, dtype=np.float32)
        if name in linears:
            arr = arr.T
        if tuple(params[name].shape) != arr.shape:
            raise ValueError(f"{name}: model shape {tuple(params[name].shape)} != given {arr.shape}")
        params[name].set_value(np.ascontiguousarray(arr))


def neutral_weights(model: Any) -> dict[str, np.ndarray]:
    """Every parameter as numpy float32 under its neutral name (Linear weights [out, in])."""
    linears = {f"{n}.weight" for n in _linear_sublayers(model)}
    return {name: (p.numpy().T.copy() if name in linears else p.numpy().copy())
            for name, p in model.named_parameters()}


class UserEncoderClassifier(nn.Layer):
    """A user's classifier on Paddle's own Transformer: Embedding -> nn.TransformerEncoder(nn.TransformerEncoderLayer)
    -> masked mean pool -> Linear. No zoo names and no `zoo_family`: its structure comes from the layer types.

    forward(input_ids [B, L] int64, attention_mask [B, L] 0/1) -> logits [B, num_labels]; the mask becomes the
    encoder's src_mask (Paddle turns an integer mask into -1e9 on padded keys) and weights the mean.
    """

    input_names = ("input_ids", "attention_mask")

    def __init__(self, vocab_size: int, d_model: int = 32, nhead: int = 4, dim_feedforward: int = 64,
                 num_layers: int = 2, num_labels: int = 3):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        # dropout 0: the same weights give the same training steps on every run
        block = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0.0)
        self.encoder = nn.TransformerEncoder(block, num_layers)
        self.classifier = nn.Linear(d_model, num_labels)

    def forward(self, input_ids, attention_mask=None):
        if attention_mask is None:
            attention_mask = paddle.ones_like(input_ids)
        h = self.encoder(self.embedding(input_ids), src_mask=attention_mask.unsqueeze([1, 2]))
        keep = attention_mask.astype("float32").unsqueeze(-1)
        pooled = (h * keep).sum(axis=1) / paddle.clip(keep.sum(axis=1), min=1.0)
        return self.classifier(pooled)


def _random_user_weights(model: Any, seed: int) -> None:
    """Deterministic weights from `seed` (numpy, so Paddle's global seed is left alone): Linear N(0, 1/in) with
    a different scale per output unit (no ties for head/neuron scores), small biases, N(0, 1) embeddings,
    LayerNorm 1/0."""
    rng = np.random.default_rng(seed)
    linears = {f"{n}.weight" for n in _linear_sublayers(model)}
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        if name in linears:  # Paddle's [in, out]
            w = rng.normal(0.0, 1.0 / math.sqrt(shape[0]), shape) * rng.uniform(0.5, 1.5, (1, shape[1]))
        elif ".norm" in name:
            w = np.ones(shape) if name.endswith("weight") else np.zeros(shape)
        elif len(shape) == 1:
            w = rng.normal(0.0, 0.02, shape)
        else:
            w = rng.normal(0.0, 1.0, shape)
        p.set_value(w.astype(np.float32))


def build_user_encoder(seed: int = 0, num_labels: Optional[int] = None) -> UserEncoderClassifier:
    """The "user-encoder" model: tiny-bert's vocabulary, d_model 32, 2 layers of 4 heads, FFN 64."""
    from unicompress import zoo as uzoo

    cfg = uzoo.config_for("tiny-bert", num_labels)
    model = UserEncoderClassifier(cfg.vocab_size, 32, 4, 64, 2, cfg.num_labels)
    _random_user_weights(model, seed)
    model.zoo_name = "user-encoder"
    model.eval()
    return model


def build_model(zoo: str, seed: int = 0, num_labels: Optional[int] = None,
                weights: Optional[dict[str, np.ndarray]] = None) -> Any:
    """A zoo model ("tiny-bert", "tiny-vit", "minilm-l6") as a paddle.nn.Layer with the neutral weights, or
    "user-encoder" (`UserEncoderClassifier`, random weights from `seed`: it has no neutral weights).

    Example: ``build_model("tiny-bert")(paddle.to_tensor(ids), paddle.to_tensor(mask))`` -> logits [B, 3].
    """
    from unicompress import zoo as uzoo

    if zoo == "user-encoder":
        if weights is not None:
            raise ValueError("build_model('user-encoder') takes no weights=: it is a plain nn.TransformerEncoder "
                             "classifier with random weights from `seed`, not a zoo architecture with neutral names")
        return build_user_encoder(seed, num_labels)
    cfg = uzoo.config_for(zoo, num_labels)
    model = ViTForImageClassification(cfg) if zoo == "tiny-vit" else BertForSequenceClassification(cfg)
    model.zoo_name = zoo
    load_neutral_weights(model, weights if weights is not None else uzoo.weights_for(zoo, cfg, seed))
    model.eval()
    return model
