"""The zoo models' forward pass in float64 numpy: the semantics of `zoo.bert` / `zoo.vit`, run without a framework.

Every backend builds these models from the same neutral weights; its tests compare the backend's logits with
`logits` (tolerance 1e-4 in float32), so one numpy forward is the reference for all of them.
Weights are the neutral dict of ``zoo.weights_for`` (``<layer>.weight`` [out, in], ``<layer>.bias``).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

_erf = np.vectorize(math.erf)


def _ln(x: np.ndarray, w: dict, name: str, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]


def _lin(x: np.ndarray, w: dict, name: str) -> np.ndarray:
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _attention(x: np.ndarray, w: dict, prefix: str, heads: int, mask_add: Any = 0.0,
               taps: Optional[dict] = None) -> np.ndarray:
    """Multi-head self-attention of one block (``<prefix>.attention.self.{query,key,value}``, output dense);
    `taps` receives the block's per-head q, k, v [B, heads, L, d] when given."""
    b, n, h = x.shape
    d = h // heads
    q, k, v = (_lin(x, w, f"{prefix}.attention.self.{p}").reshape(b, n, heads, d).transpose(0, 2, 1, 3)
               for p in ("query", "key", "value"))
    if taps is not None:
        taps.update(q=q, k=k, v=v)
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + mask_add
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return _lin((p @ v).transpose(0, 2, 1, 3).reshape(b, n, h), w, f"{prefix}.attention.output.dense")


def bert_features(config: Any, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The zoo BERT's logits, every block's output (``hidden``, after its last LayerNorm) and every block's
    per-head q, k, v (``attention``: a list of dicts): what distillation losses read."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    e, eps = "bert.embeddings", config.layer_norm_eps
    x = w[f"{e}.word_embeddings.weight"][ids] + w[f"{e}.position_embeddings.weight"][: ids.shape[1]] \
        + w[f"{e}.token_type_embeddings.weight"][0]
    x = _ln(x, w, f"{e}.LayerNorm", eps)
    mask_add = ((1.0 - mask) * -1e9)[:, None, None, :]
    hidden, attention = [], []
    for i in range(config.num_hidden_layers):
        p = f"bert.encoder.layer.{i}"
        taps: dict = {}
        x = _ln(x + _attention(x, w, p, config.num_attention_heads, mask_add, taps), w,
                f"{p}.attention.output.LayerNorm", eps)
        x = _ln(x + _lin(_gelu(_lin(x, w, f"{p}.intermediate.dense")), w, f"{p}.output.dense"), w,
                f"{p}.output.LayerNorm", eps)
        hidden.append(x)
        attention.append(taps)
    logits = _lin(np.tanh(_lin(x[:, 0], w, "bert.pooler.dense")), w, "classifier")
    return {"logits": logits, "hidden": hidden, "attention": attention}


def bert_logits(config: Any, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The zoo BERT's logits (``zoo.bert`` semantics: post-LayerNorm blocks, additive -1e9 mask, tanh pooler)."""
    return bert_features(config, weights, inputs)["logits"]


def vit_logits(config: Any, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The zoo ViT's logits (``zoo.vit`` semantics: row-major patches, pre-LayerNorm blocks, CLS token)."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    px = np.asarray(inputs["pixel_values"], np.float64)
    b, p, g = px.shape[0], config.patch_size, config.image_size // config.patch_size
    patches = px.reshape(b, g, p, g, p).transpose(0, 1, 3, 2, 4).reshape(b, g * g, p * p)
    x = _lin(patches, w, "vit.embeddings.patch_embeddings")
    cls = np.broadcast_to(w["vit.embeddings.cls_token"], (b, 1, x.shape[-1]))
    x = np.concatenate([cls, x], 1) + w["vit.embeddings.position_embeddings"]
    eps = config.layer_norm_eps
    for i in range(config.num_hidden_layers):
        pre = f"vit.encoder.layer.{i}"
        x = x + _attention(_ln(x, w, f"{pre}.layernorm_before", eps), w, pre, config.num_attention_heads)
        h = _ln(x, w, f"{pre}.layernorm_after", eps)
        x = x + _lin(_gelu(_lin(h, w, f"{pre}.intermediate.dense")), w, f"{pre}.output.dense")
    return _lin(_ln(x, w, "vit.layernorm", eps)[:, 0], w, "classifier")


def logits(name: str, config: Any, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The float64 logits of zoo model `name` (``tiny-bert``, ``minilm-l6``: BERT; ``tiny-vit``: ViT).

    Example: ``logits("tiny-bert", cfg, zoo.weights_for("tiny-bert", cfg), zoo.inputs_for("tiny-bert", cfg))``.
    """
    return (vit_logits if name == "tiny-vit" else bert_logits)(config, weights, inputs)
