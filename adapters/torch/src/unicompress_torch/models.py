"""The zoo models in PyTorch: HF BertForSequenceClassification for BERT, a small nn.Module for the ViT,
and ``user-encoder``: an HF MPNetForSequenceClassification (attention ``attention.attn.q/k/v/o``), a real
architecture the zoo does not describe, for checking that structure discovery works beyond BERT names.

Both carry the neutral HF-style module names of `unicompress.zoo`, so `state_dict()` keys are the
neutral weight names and `load_neutral_weights` is a plain `load_state_dict`.

Dropout probabilities are 0.0: the zoo models are for conformance and compression, where runs must
be deterministic; fine-tuning a real task with dropout is the user's own model choice.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unicompress import zoo
from unicompress.zoo.vit import ViTConfig

from .training import global_rng_kept


def hf_bert_config(cfg: zoo.bert.BertConfig):
    """A transformers BertConfig with the zoo sizes, exact (erf) GELU and eager attention."""
    from transformers import BertConfig

    return BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                      num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                      intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
                      type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps,
                      num_labels=cfg.num_labels, hidden_act="gelu", hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
                      attn_implementation="eager")


# ---- ViT ------------------------------------------------------------------------------------------
class ViTSelfAttention(nn.Module):
    """Multi-head self-attention with separate Q/K/V Linears (heads inferred from the widths)."""

    def __init__(self, hidden: int, num_heads: int):
        super().__init__()
        self.num_attention_heads = num_heads
        self.attention_head_size = hidden // num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        d = self.attention_head_size

        def split(t: torch.Tensor) -> torch.Tensor:  # -1 heads: still right after heads are pruned
            return t.view(b, n, -1, d).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        return (attn @ v).transpose(1, 2).reshape(b, n, -1)


class _Dense(nn.Module):
    def __init__(self, fan_in: int, fan_out: int):
        super().__init__()
        self.dense = nn.Linear(fan_in, fan_out)


class ViTAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int):
        super().__init__()
        self.self = ViTSelfAttention(hidden, num_heads)
        self.output = _Dense(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.dense(self.self(x))


class ViTLayer(nn.Module):
    """Pre-LayerNorm encoder block: x + Attn(LN1 x), then x + W2 gelu(W1 LN2 x)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        h = cfg.hidden_size
        self.layernorm_before = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.attention = ViTAttention(h, cfg.num_attention_heads)
        self.layernorm_after = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.intermediate = _Dense(h, cfg.intermediate_size)
        self.output = _Dense(cfg.intermediate_size, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


class ViTEncoder(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layer = nn.ModuleList([ViTLayer(cfg) for _ in range(cfg.num_hidden_layers)])


class ViTEmbeddings(nn.Module):
    """Flattened patches projected by a Linear, a CLS token and learned positions."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.hidden_size))
        self.patch_embeddings = nn.Linear(cfg.patch_size ** 2, cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, height, width = pixel_values.shape
        p = self.patch_size
        # patches in row-major grid order, each patch's pixels row-major: [B, (H/p)*(W/p), p*p]
        patches = pixel_values.reshape(b, height // p, p, width // p, p).permute(0, 1, 3, 2, 4)
        patches = patches.reshape(b, (height // p) * (width // p), p * p)
        x = self.patch_embeddings(patches)
        return torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + self.position_embeddings


class ViTBody(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.embeddings = ViTEmbeddings(cfg)
        self.encoder = ViTEncoder(cfg)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class ViTForImageClassification(nn.Module):
    """The neutral tiny ViT (`unicompress.zoo.vit`): input ``pixel_values`` [B, H, W], output logits."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg
        self.vit = ViTBody(cfg)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.vit.embeddings(pixel_values)
        for layer in self.vit.encoder.layer:
            x = layer(x)
        return self.classifier(self.vit.layernorm(x)[:, 0])


# ---- building ---------------------------------------------------------------------------------------
def load_neutral_weights(model: nn.Module, weights: dict[str, np.ndarray], strict: bool = True) -> nn.Module:
    """Copy neutral numpy weights (names = state_dict keys) into `model`."""
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise KeyError(f"weights do not fit the model: missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")
    return model


#: models built here that the zoo has no neutral description of (no neutral weights)
USER_MODELS = ("user-encoder",)


def user_encoder(seed: int = 0, num_labels: Optional[int] = None) -> nn.Module:
    """HF MPNetForSequenceClassification from a tiny config: the tiny-bert vocabulary, hidden 32, 2 layers,
    4 heads, FFN 64, no dropout, random weights drawn from `seed`; inputs ``input_ids`` + ``attention_mask``
    like tiny-bert (token 0 is padding, as in `zoo.inputs_for("tiny-bert", ...)`).

    Example: ``user_encoder(num_labels=3)(**to_torch_inputs(zoo.inputs_for("tiny-bert", cfg))).logits``.
    """
    from transformers import MPNetConfig, MPNetForSequenceClassification

    bert = zoo.config_for("tiny-bert")
    cfg = MPNetConfig(vocab_size=bert.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=bert.max_position_embeddings + 2,
                      num_labels=num_labels if num_labels is not None else bert.num_labels, pad_token_id=0,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden_act="gelu",
                      attn_implementation="eager")
    with global_rng_kept():  # the seed decides the init; the user's global RNG stream is left as it was
        torch.manual_seed(seed)
        model = MPNetForSequenceClassification(cfg)
    model.eval()
    return model


def build_model(name: str, seed: int = 0, num_labels: Optional[int] = None,
                weights: Optional[dict[str, np.ndarray]] = None) -> nn.Module:
    """A zoo model ("tiny-bert", "tiny-vit", "minilm-l6") in PyTorch with its neutral weights, in eval mode,
    or ``user-encoder`` (`user_encoder`: random weights from `seed`; it has no neutral weights).

    Example: ``build_model("tiny-bert")(**to_torch_inputs(zoo.inputs_for(...))).logits``.
    """
    if name in USER_MODELS:
        if weights is not None:
            raise ValueError(f"{name!r} is not a zoo architecture: it has no neutral weight layout, so weights= "
                             "cannot be loaded into it; build it with a seed and load a state dict instead")
        model = user_encoder(seed, num_labels)
        model.unicompress_zoo = name  # type: ignore[attr-defined]  # lets export_native rebuild it
        return model
    cfg = zoo.config_for(name, num_labels)
    if weights is None:
        weights = zoo.weights_for(name, cfg, seed)
    if name == "tiny-vit":
        model: nn.Module = ViTForImageClassification(cfg)
    else:
        from transformers import BertForSequenceClassification

        with global_rng_kept():  # HF init runs before our weights replace it; keep it reproducible
            torch.manual_seed(seed)
            model = BertForSequenceClassification(hf_bert_config(cfg))
    load_neutral_weights(model, weights)
    model.eval()
    model.unicompress_zoo = name  # type: ignore[attr-defined]  # lets export_native record the origin
    return model


def zoo_config(model: nn.Module) -> Any:
    """The model's config (HF config or ViTConfig), or None for other modules."""
    return getattr(model, "config", None)


def neutral_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """Every float tensor of the state dict under its (already neutral, HF-style) name, as numpy float32;
    buffers that are not weights (e.g. position ids) are left out."""
    return {name: value.detach().cpu().numpy().astype(np.float32) for name, value in model.state_dict().items()
            if value.is_floating_point()}
