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
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

from ..backend.types import LayerInfo, TransformerStructure
from ..specs.selector import LayerRole

#: Roles that only a Transformer structure may hand out once one is known.
TRANSFORMER_ROLES = frozenset({LayerRole.query, LayerRole.key, LayerRole.value, LayerRole.qkv,
                               LayerRole.attention_output, LayerRole.ffn_in, LayerRole.ffn_gate,
                               LayerRole.ffn_out})


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
