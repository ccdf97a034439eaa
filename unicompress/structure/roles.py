"""The one rule that gives every layer its role: the structure first, the name fallback last.

Each adapter reports its layers with a fallback role read from names (and types such as Embedding)
and, separately, the structure it discovered from layer types and the model's config. `assign_roles`
merges the two the same way on every backend:
  - a layer the structure names (Q/K/V/O, packed QKV, FFN in/gate/out, classifier, pooler, embeddings)
    takes that role and its block's number;
  - when a structure was found, the attention and FFN roles come from it alone: a layer outside it that
    only *looks* like one by name (RoBERTa's ``classifier.out_proj``) becomes ``other`` (or, after the
    last block, part of the head);
  - when the structure names no classifier, the last Linear after its last block is the classifier (the
    task head, which the default selector skips);
  - without a structure, the adapter's name-based roles stand (the fallback).

`role_from_name` / `block_from_name` are that fallback, one table for every backend: an adapter calls them
for each layer (after its own type rules, e.g. an Embedding is an embedding) and hands the result to
`assign_roles`, where a discovered structure overrides them.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Optional, Sequence

from ..backend.types import LayerInfo, TransformerStructure
from ..specs.selector import LayerRole

#: Roles that only a Transformer structure may hand out once one is known.
TRANSFORMER_ROLES = frozenset({LayerRole.query, LayerRole.key, LayerRole.value, LayerRole.qkv,
                               LayerRole.attention_output, LayerRole.ffn_in, LayerRole.ffn_gate,
                               LayerRole.ffn_out})


#: dotted-name suffix -> role, the first match wins. Hugging Face / zoo names first, then the common short names
#: (PyTorch, Paddle, BART/DistilBERT/Marian); the head before the attention names so that RoBERTa's
#: ``classifier.out_proj`` is the classifier, not an attention output.
_NAME_RULES: tuple[tuple[re.Pattern, LayerRole], ...] = tuple((re.compile(r"(^|\.)" + p + "$"), role) for p, role in (
    (r"attention\.self\.query", LayerRole.query),
    (r"attention\.self\.key", LayerRole.key),
    (r"attention\.self\.value", LayerRole.value),
    (r"attention\.output\.dense", LayerRole.attention_output),
    (r"intermediate\.dense", LayerRole.ffn_in),
    (r"output\.dense", LayerRole.ffn_out),
    (r"pooler(\.dense)?", LayerRole.pooler),
    (r"(classifier|lm_head|score|head)(\.out_proj)?", LayerRole.classifier),
    (r"(q_proj|q_lin|query)", LayerRole.query),
    (r"(k_proj|k_lin|key)", LayerRole.key),
    (r"(v_proj|v_lin|value)", LayerRole.value),
    (r"(out_proj|o_proj|out_lin)", LayerRole.attention_output),
    (r"(linear1|fc1|lin1)", LayerRole.ffn_in),
    (r"(linear2|fc2|lin2)", LayerRole.ffn_out),
    (r"(patch_)?embeddings?(\..*)?", LayerRole.embedding),
))
#: the block index in a dotted name: ``encoder.layer.3.`` / ``layers.3`` / ``blocks.3`` / ``block.3`` / GPT-2's ``h.3``
_BLOCK_RULE = re.compile(r"(?:^|\.)(?:layer|layers|blocks|block|h)\.(\d+)(?:\.|$)")


def role_from_name(name: str) -> LayerRole:
    """The fallback role of a layer from its dotted name alone (``other`` when no rule matches).

    Only for models where discovery found no structure (and for the head and embedding names around a found
    one): `assign_roles` lets a structure override it. A low-rank factor should be passed its base name.
    Example: ``role_from_name("roberta.encoder.layer.0.attention.self.query") is LayerRole.query``;
    ``role_from_name("classifier.out_proj") is LayerRole.classifier``.
    """
    return next((role for rule, role in _NAME_RULES if rule.search(name)), LayerRole.other)


def block_from_name(name: str) -> Optional[int]:
    """The Transformer block index a dotted name carries, or None.

    Example: ``block_from_name("transformer.h.3.mlp.c_fc") == 3``."""
    match = _BLOCK_RULE.search(name)
    return int(match.group(1)) if match else None


def roles_of(structure: TransformerStructure) -> dict[str, tuple[LayerRole, Optional[int]]]:
    """Layer name -> (role, block) for every layer the structure names."""
    out: dict[str, tuple[LayerRole, Optional[int]]] = {}
    for name in structure.embeddings:
        out[name] = (LayerRole.embedding, None)
    for a in structure.attention:
        if a.packed:
            out[a.query] = (LayerRole.qkv, a.block)
        else:
            out[a.query] = (LayerRole.query, a.block)
            out[a.key] = (LayerRole.key, a.block)
            out[a.value] = (LayerRole.value, a.block)
        out[a.output] = (LayerRole.attention_output, a.block)
    for f in structure.ffn:
        out[f.ffn_in] = (LayerRole.ffn_in, f.block)
        if f.gate:
            out[f.gate] = (LayerRole.ffn_gate, f.block)
        out[f.ffn_out] = (LayerRole.ffn_out, f.block)
    for name in structure.pooler:
        out[name] = (LayerRole.pooler, None)
    if structure.classifier:
        out[structure.classifier] = (LayerRole.classifier, None)
    return out


#: name suffixes of the two factors a low-rank stage puts in place of one layer (torch/TF: .0/.1, Paddle: .first/.second)
LOW_RANK_SUFFIXES = (".0", ".1", ".first", ".second")


def factorised_base(name: str) -> Optional[str]:
    """The layer a low-rank factor replaced (``enc.ffn.0`` -> ``enc.ffn``), or None for any other name."""
    for suffix in LOW_RANK_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _base(name: str, known: dict) -> str:
    """A low-rank factor takes the role of the layer it replaced."""
    base = factorised_base(name)
    if name not in known and base is not None and base in known:
        return base
    return name


def assign_roles(layers: Sequence[LayerInfo], structure: Optional[TransformerStructure]) -> list[LayerInfo]:
    """`layers` with roles and blocks from `structure` (the rule in the module docstring).

    Example: ``assign_roles(adapter_layers, structure)`` turns a RoBERTa ``classifier.out_proj`` that the
    names called an attention output into the classifier the structure says it is.
    """
    if structure is None:
        return list(layers)
    known = roles_of(structure)
    has_blocks = bool(structure.attention or structure.ffn)
    block_layers = {n for a in structure.attention for n in a.layers} | {n for f in structure.ffn for n in f.layers}
    last = max((i for i, layer in enumerate(layers) if _base(layer.name, known) in block_layers), default=None)
    out = []
    for layer in layers:
        base = _base(layer.name, known)
        if base in known:
            role, block = known[base]
            out.append(replace(layer, role=role, block=block if block is not None else layer.block))
        elif has_blocks and layer.role in TRANSFORMER_ROLES:
            out.append(replace(layer, role=LayerRole.other))
        else:
            out.append(layer)
    if last is not None and structure.classifier is None:
        tail = [i for i in range(last + 1, len(out)) if out[i].kind == "linear" and out[i].role is LayerRole.other]
        if tail:
            out[tail[-1]] = replace(out[tail[-1]], role=LayerRole.classifier)
    return out
