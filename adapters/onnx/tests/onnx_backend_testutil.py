"""Shared helpers of the onnx backend tests (a plain module, not a conftest: names stay unique).

`bert_logits` / `vit_logits` are numpy forwards of the zoo models written from the semantics in
`unicompress.zoo.bert` / `unicompress.zoo.vit`, so the graphs are checked without torch.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from unicompress import zoo
from unicompress.backend.registry import get_backend

logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization warns about pre-processing on the root logger


def adapter():
    return get_backend("onnx")


def tiny(name: str = "tiny-bert", seed: int = 0, batch: int = 4):
    """(model, config, example inputs) of a zoo model built by the onnx backend."""
    cfg = zoo.config_for(name)
    return adapter().build_model(name, seed=seed), cfg, zoo.inputs_for(name, cfg, batch=batch)


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _lin(x, weights, name):
    return x @ weights[f"{name}.weight"].T.astype(np.float64) + weights[f"{name}.bias"]


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _attention(x, weights, prefix, heads, mask_add):
    b, n, h = x.shape
    d = h // heads
    q, k, v = (_lin(x, weights, f"{prefix}.attention.self.{p}").reshape(b, n, heads, d).transpose(0, 2, 1, 3)
               for p in ("query", "key", "value"))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + mask_add
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return _lin((p @ v).transpose(0, 2, 1, 3).reshape(b, n, h), weights, f"{prefix}.attention.output.dense")


def bert_logits(cfg, weights, inputs) -> np.ndarray:
    """The zoo BERT's logits in float64 numpy."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    e = "bert.embeddings"
    x = w[f"{e}.word_embeddings.weight"][ids] + w[f"{e}.position_embeddings.weight"][: ids.shape[1]] \
        + w[f"{e}.token_type_embeddings.weight"][0]
    x = _ln(x, w[f"{e}.LayerNorm.weight"], w[f"{e}.LayerNorm.bias"], cfg.layer_norm_eps)
    add = ((1.0 - mask) * -1e30)[:, None, None, :]
    for i in range(cfg.num_hidden_layers):
        p = f"bert.encoder.layer.{i}"
        x = _ln(x + _attention(x, w, p, cfg.num_attention_heads, add), w[f"{p}.attention.output.LayerNorm.weight"],
                w[f"{p}.attention.output.LayerNorm.bias"], cfg.layer_norm_eps)
        f = _lin(_gelu(_lin(x, w, f"{p}.intermediate.dense")), w, f"{p}.output.dense")
        x = _ln(x + f, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], cfg.layer_norm_eps)
    return _lin(np.tanh(_lin(x[:, 0], w, "bert.pooler.dense")), w, "classifier")


def vit_logits(cfg, weights, inputs) -> np.ndarray:
    """The zoo ViT's logits in float64 numpy."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    px = inputs["pixel_values"].astype(np.float64)
    b, p, g = px.shape[0], cfg.patch_size, cfg.image_size // cfg.patch_size
    patches = px.reshape(b, g, p, g, p).transpose(0, 1, 3, 2, 4).reshape(b, g * g, p * p)
    x = _lin(patches, w, "vit.embeddings.patch_embeddings")
    x = np.concatenate([np.repeat(w["vit.embeddings.cls_token"], b, 0), x], 1) + w["vit.embeddings.position_embeddings"]
    eps = cfg.layer_norm_eps
    for i in range(cfg.num_hidden_layers):
        pre = f"vit.encoder.layer.{i}"
        x = x + _attention(_ln(x, w[f"{pre}.layernorm_before.weight"], w[f"{pre}.layernorm_before.bias"], eps),
                           w, pre, cfg.num_attention_heads, 0.0)
        h = _ln(x, w[f"{pre}.layernorm_after.weight"], w[f"{pre}.layernorm_after.bias"], eps)
        x = x + _lin(_gelu(_lin(h, w, f"{pre}.intermediate.dense")), w, f"{pre}.output.dense")
    return _lin(_ln(x, w["vit.layernorm.weight"], w["vit.layernorm.bias"], eps)[:, 0], w, "classifier")


#: the encoder Linears the default selector chooses in tiny-bert (not embeddings, pooler or classifier)
def encoder_linears(cfg) -> list[str]:
    return [n for n, role, _ in zoo.bert.linear_names(cfg) if role not in ("pooler", "classifier")]
