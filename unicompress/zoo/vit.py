"""The neutral ViT for the image path (MNIST 28x28): one config, one naming scheme, numpy weights.

Patches are flattened and projected by a Linear (no convolution), so every framework builds it
the same way. Patch order: row-major over the patch grid, and each patch's pixels row-major, i.e.
``x.reshape(B, H/p, p, W/p, p).transpose(0, 1, 3, 2, 4).reshape(B, (H/p)*(W/p), p*p)``. Encoder blocks are pre-LayerNorm, as in ViT:
  x = [cls; patches W_p^T + b] + pos
  per layer: x = x + Attn(LN1(x)) Wo^T;  x = x + gelu_erf(LN2(x) W1^T) W2^T
  logits = classifier(LN(x)[:, 0])
Names mirror the BERT scheme (``vit.encoder.layer.0.attention.self.query.weight``).
Input: ``pixel_values`` float32 [B, image, image].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 28
    patch_size: int = 7
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    layer_norm_eps: float = 1e-6
    num_labels: int = 10

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)


TINY_VIT = ViTConfig(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=10)


def linear_names(config: ViTConfig) -> Iterator[tuple[str, str, tuple[int, int]]]:
    h, f, p = config.hidden_size, config.intermediate_size, config.patch_size ** 2
    yield "vit.embeddings.patch_embeddings", "embedding", (h, p)
    for i in range(config.num_hidden_layers):
        pre = f"vit.encoder.layer.{i}"
        yield f"{pre}.attention.self.query", "query", (h, h)
        yield f"{pre}.attention.self.key", "key", (h, h)
        yield f"{pre}.attention.self.value", "value", (h, h)
        yield f"{pre}.attention.output.dense", "attention_output", (h, h)
        yield f"{pre}.intermediate.dense", "ffn_in", (f, h)
        yield f"{pre}.output.dense", "ffn_out", (h, f)
    yield "classifier", "classifier", (config.num_labels, h)


def weight_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    h = config.hidden_size
    shapes: dict[str, tuple[int, ...]] = {
        "vit.embeddings.cls_token": (1, 1, h),
        "vit.embeddings.position_embeddings": (1, config.num_patches + 1, h),
    }
    for name, _, shape in linear_names(config):
        shapes[f"{name}.weight"] = shape
        shapes[f"{name}.bias"] = (shape[0],)
    lns = ["vit.layernorm"] + [f"vit.encoder.layer.{i}.{n}" for i in range(config.num_hidden_layers)
                               for n in ("layernorm_before", "layernorm_after")]
    for name in lns:
        shapes[f"{name}.weight"] = (h,)
        shapes[f"{name}.bias"] = (h,)
    return shapes


def init_weights(config: ViTConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic float32 weights; rows of different norm so magnitude criteria have no ties."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in weight_shapes(config).items():
        if "layernorm" in name:
            out[name] = (np.ones(shape) if name.endswith("weight") else np.zeros(shape)).astype(np.float32)
        elif name.endswith("bias"):
            out[name] = np.zeros(shape, np.float32)
        else:
            std = 0.02 if "embeddings" in name and "patch" not in name else (1.0 / np.sqrt(shape[-1]))
            w = rng.normal(0.0, std, shape)
            if len(shape) == 2:
                w *= rng.uniform(0.5, 1.5, (shape[0], 1))
            out[name] = w.astype(np.float32)
    return out


def example_inputs(config: ViTConfig, batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 2000)
    return {"pixel_values": rng.random((batch, config.image_size, config.image_size), dtype=np.float32)}
