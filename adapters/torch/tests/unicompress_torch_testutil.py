"""Shared helpers of the torch adapter tests (a plain module, not a conftest: names stay unique)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from unicompress import zoo
from unicompress.backend.types import TaskData

torch.set_num_threads(1)


def tiny(name: str = "tiny-bert", seed: int = 0):
    """(model, config, example inputs) of a zoo model built by the torch adapter."""
    from unicompress_torch.models import build_model

    cfg = zoo.config_for(name)
    return build_model(name, seed=seed), cfg, zoo.inputs_for(name, cfg)


def task_data(name: str = "tiny-bert", batches: int = 4, batch: int = 8, seed: int = 0) -> TaskData:
    """A small deterministic classification task for a zoo model (labels from a fixed rule)."""
    cfg = zoo.config_for(name)
    data = []
    for b in range(batches):
        x = zoo.inputs_for(name, cfg, batch=batch, seed=seed + b) if name == "tiny-vit" else \
            zoo.inputs_for(name, cfg, batch=batch, length=8, seed=seed + b)
        key = "pixel_values" if name == "tiny-vit" else "input_ids"
        y = (np.asarray(x[key]).reshape(batch, -1).sum(axis=1) % cfg.num_labels).astype(np.int64)
        data.append((x, y))
    return TaskData(train=lambda: iter(data), num_labels=cfg.num_labels)


def encoder_model(d_model: int = 16, heads: int = 2, ff: int = 32, layers: int = 2, classes: int = 3):
    """A plain nn.TransformerEncoder classifier on float inputs [B, L, d_model]."""
    torch.manual_seed(0)

    class EncoderClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.classifier = torch.nn.Linear(d_model, classes)

        def forward(self, x):
            return self.classifier(self.encoder(x)[:, 0])

    return EncoderClassifier().eval()


# ---- numpy forwards of the zoo semantics (unicompress/zoo docstrings), for logit checks ------------------
def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    from math import erf, sqrt
    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


def _attention(x, w, p, heads, mask_add=None):
    b, n, h = x.shape
    d = h // heads

    def proj(name):
        return x @ w[f"{p}.{name}.weight"].T + w[f"{p}.{name}.bias"]

    q, k, v = (proj(f"self.{n_}").reshape(b, n, heads, d).transpose(0, 2, 1, 3) for n_ in ("query", "key", "value"))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    if mask_add is not None:
        s = s + mask_add
    s = np.exp(s - s.max(-1, keepdims=True))
    s = s / s.sum(-1, keepdims=True)
    a = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, h)
    return a @ w[f"{p}.output.dense.weight"].T + w[f"{p}.output.dense.bias"]


def numpy_bert(w, cfg, inputs):
    """float64 forward of the neutral BERT (zoo/bert.py semantics)."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    L = ids.shape[1]
    e = "bert.embeddings"
    x = w[f"{e}.word_embeddings.weight"][ids] + w[f"{e}.position_embeddings.weight"][:L][None] \
        + w[f"{e}.token_type_embeddings.weight"][0]
    x = _ln(x, w[f"{e}.LayerNorm.weight"], w[f"{e}.LayerNorm.bias"], cfg.layer_norm_eps)
    add = ((1.0 - mask[:, None, None, :]) * -1e9)
    for i in range(cfg.num_hidden_layers):
        p = f"bert.encoder.layer.{i}"
        a = _attention(x, w, f"{p}.attention", cfg.num_attention_heads, add)
        x = _ln(x + a, w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"],
                cfg.layer_norm_eps)
        f = _gelu(x @ w[f"{p}.intermediate.dense.weight"].T + w[f"{p}.intermediate.dense.bias"])
        f = f @ w[f"{p}.output.dense.weight"].T + w[f"{p}.output.dense.bias"]
        x = _ln(x + f, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], cfg.layer_norm_eps)
    pooled = np.tanh(x[:, 0] @ w["bert.pooler.dense.weight"].T + w["bert.pooler.dense.bias"])
    return pooled @ w["classifier.weight"].T + w["classifier.bias"]


def numpy_vit(w, cfg, inputs):
    """float64 forward of the neutral ViT (zoo/vit.py semantics; patches row-major, pixels row-major)."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    px = inputs["pixel_values"].astype(np.float64)
    b, hgt, wid = px.shape
    p = cfg.patch_size
    patches = px.reshape(b, hgt // p, p, wid // p, p).transpose(0, 1, 3, 2, 4).reshape(b, -1, p * p)
    e = "vit.embeddings"
    x = patches @ w[f"{e}.patch_embeddings.weight"].T + w[f"{e}.patch_embeddings.bias"]
    cls = np.broadcast_to(w[f"{e}.cls_token"], (b, 1, x.shape[-1]))
    x = np.concatenate([cls, x], 1) + w[f"{e}.position_embeddings"]
    eps = cfg.layer_norm_eps
    for i in range(cfg.num_hidden_layers):
        q = f"vit.encoder.layer.{i}"
        x = x + _attention(_ln(x, w[f"{q}.layernorm_before.weight"], w[f"{q}.layernorm_before.bias"], eps), w,
                           f"{q}.attention", cfg.num_attention_heads)
        h = _ln(x, w[f"{q}.layernorm_after.weight"], w[f"{q}.layernorm_after.bias"], eps)
        x = x + _gelu(h @ w[f"{q}.intermediate.dense.weight"].T + w[f"{q}.intermediate.dense.bias"]) \
            @ w[f"{q}.output.dense.weight"].T + w[f"{q}.output.dense.bias"]
    x = _ln(x, w["vit.layernorm.weight"], w["vit.layernorm.bias"], eps)
    return x[:, 0] @ w["classifier.weight"].T + w["classifier.bias"]
