"""Structure the user declares when discovery cannot know it: a role per layer glob, heads, FFN pairs.

In a recipe::

    structure:
      num_heads: 8
      roles:
        "encoder.blocks.*.attn.wq": query
        "encoder.blocks.*.attn.wk": key
        "encoder.blocks.*.attn.wv": value
        "encoder.blocks.*.attn.wo": attention_output
        "encoder.blocks.*.mlp.up": ffn_in
        "encoder.blocks.*.mlp.down": ffn_out
      classifier: head

Layers are grouped into blocks by the name up to its last number (``encoder.blocks.3``), numbered in model
order. A block with more than one attention (a decoder's self- and cross-attention) is declared with
explicit `attention:` entries instead. The declaration is checked against the model's layers before
anything runs. What it declares replaces what discovery found: declared attention replaces the discovered
attention blocks, declared FFN pairs the discovered pairs; what it leaves out (attention, FFN pairs,
classifier, embeddings) stays as discovered. Declared heads are masked, never removed: only a recognised architecture tells the backend
how the attention reshapes its heads (`remove_pruned: true` on them is refused); declared FFN pairs
can be removed, since their intermediate width is internal to the pair.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Optional, Sequence

from ..backend.types import AttentionInfo, FFNInfo, LayerInfo, TransformerStructure
from ..errors import StructureError
from ..specs.selector import LayerRole
from ..specs.structure import AttentionDeclaration, FFNDeclaration, StructureDeclaration

_BLOCK_KEY = re.compile(r"^(.*?\d+)(?:\.|$)")


def _block_key(name: str) -> str:
    m = _BLOCK_KEY.match(name)
    return m.group(1) if m else ""


def declared_structure(decl: StructureDeclaration, layers: Sequence[LayerInfo],
                       discovered: Optional[TransformerStructure] = None) -> TransformerStructure:
    """The TransformerStructure a declaration gives on a model with these layers.

    Raises StructureError naming the glob or layer that does not fit (no match, unknown layer, heads that
    do not divide the projection, a block with a missing or doubled role).
    Example: ``declared_structure(StructureDeclaration(num_heads=4, roles={"*.wq": "query", ...}), layers)``.
    """
    by_name = {layer.name: layer for layer in layers}
    problems: list[str] = []
    role_of: dict[str, LayerRole] = {}
    for glob, role in decl.roles.items():
        hits = [n for n in by_name if fnmatch.fnmatchcase(n, glob)]
        if not hits:
            problems.append(f"structure.roles[{glob!r}] matches no layer")
        for n in hits:
            if n in role_of and role_of[n] is not role:
                problems.append(f"layer {n} is declared both {role_of[n].value} and {role.value}")
            role_of[n] = role
    attention = [a for a in decl.attention]
    ffn = [f for f in decl.ffn]
    groups: dict[str, dict[LayerRole, list[str]]] = {}
    for n in by_name:  # model order
        if n in role_of:
            groups.setdefault(_block_key(n), {}).setdefault(role_of[n], []).append(n)
    for key, members in groups.items():
        def one(role: LayerRole) -> Optional[str]:
            names = members.get(role, [])
            if len(names) > 1:
                problems.append(f"block {key or '<root>'} has {len(names)} layers declared {role.value} "
                                f"({', '.join(names)}); declare its attention blocks one by one under attention:")
            return names[0] if names else None
        q, k, v, qkv, o = (one(r) for r in (LayerRole.query, LayerRole.key, LayerRole.value, LayerRole.qkv,
                                             LayerRole.attention_output))
        if any((q, k, v, qkv, o)):
            if o is None or (qkv is None and None in (q, k, v)):
                problems.append(f"block {key or '<root>'}: an attention block needs query, key, value (or qkv) "
                                "and attention_output declared")
            else:
                attention.append(AttentionDeclaration(query=q, key=k, value=v, qkv=qkv, output=o))
        fi, fg, fo = (one(r) for r in (LayerRole.ffn_in, LayerRole.ffn_gate, LayerRole.ffn_out))
        if any((fi, fg, fo)):
            if fi is None or fo is None:
                problems.append(f"block {key or '<root>'}: an FFN pair needs ffn_in and ffn_out declared")
            else:
                ffn.append(FFNDeclaration(ffn_in=fi, ffn_out=fo, gate=fg))
    order = {n: i for i, n in enumerate(by_name)}
    blocks: dict[str, int] = {}

    def block_of(first: str) -> int:
        return blocks.setdefault(_block_key(first), len(blocks))

    def known(n: Optional[str], what: str) -> bool:
        if n is not None and n not in by_name:
            problems.append(f"structure.{what}: no layer named {n!r}; known: {', '.join(list(by_name)[:6])} ...")
            return False
        return True

    att_infos = []
    for a in sorted(attention, key=lambda a: order.get(a.qkv or a.query or "", 1 << 30)):
        names = [a.qkv] if a.qkv else [a.query, a.key, a.value]
        if not all(known(n, "attention") for n in names + [a.output]):
            continue
        heads = a.num_heads or decl.num_heads
        if heads is None:
            problems.append(f"structure: attention at {names[0]} needs num_heads (per block or for all)")
            continue
        rows = by_name[names[0]].shape[0] // (3 if a.qkv else 1)
        if rows % heads:
            problems.append(f"structure: {names[0]} has {rows} query rows, not divisible by num_heads={heads}")
            continue
        q, k, v = (a.qkv, a.qkv, a.qkv) if a.qkv else (a.query, a.key, a.value)
        att_infos.append(AttentionInfo(block_of(names[0]), q, k, v, a.output, heads, rows // heads,
                                       num_kv_heads=a.num_kv_heads, kind=a.kind, removable=False,
                                       note="declared: heads are masked, not removed"))
    ffn_infos = []
    for f in sorted(ffn, key=lambda f: order.get(f.ffn_in, 1 << 30)):
        if all(known(n, "ffn") for n in (f.ffn_in, f.ffn_out, f.gate)):
            ffn_infos.append(FFNInfo(block_of(f.ffn_in), f.ffn_in, f.ffn_out, f.gate))
    classifier = decl.classifier or next((n for n, r in role_of.items() if r is LayerRole.classifier), None)
    if classifier is not None:
        known(classifier, "classifier")
    if problems:
        raise StructureError("the declared structure does not fit this model:\n  - " + "\n  - ".join(problems))
    found = discovered
    hidden = by_name[att_infos[0].output].shape[0] if att_infos else \
        by_name[ffn_infos[0].ffn_out].shape[0] if ffn_infos else (found.hidden_size if found else 0)
    pooler = tuple(n for n, r in role_of.items() if r is LayerRole.pooler) or (found.pooler if found else ())
    embeddings = tuple(n for n, r in role_of.items() if r is LayerRole.embedding) or (found.embeddings if found else ())
    declares_attention = bool(att_infos) or bool(decl.attention)
    declares_ffn = bool(ffn_infos) or bool(decl.ffn)
    return TransformerStructure(
        hidden_size=int(hidden), num_layers=len(blocks) or (found.num_layers if found else 0),
        attention=tuple(att_infos) if declares_attention or found is None else found.attention,
        ffn=tuple(ffn_infos) if declares_ffn or found is None else found.ffn,
        classifier=classifier or (found.classifier if found else None), embeddings=embeddings, pooler=pooler,
        shared_blocks=found.shared_blocks if found else False, source="declared",
        architecture=found.architecture if found else "declared")
