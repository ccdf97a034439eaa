"""Finding the Transformer structure of any torch module from layer types, child roles and the config.

No full-name patterns: an attention module is a module whose direct children include Q, K and V
projections (Linear, transformers' Conv1D or a low-rank pair), told apart by their local names (``query``,
``q``, ``q_proj``, ``q_lin``, ``key_proj`` ...) or, for an ``*Attention`` class with unnamed children, by
their order; a packed projection (GPT-2's ``c_attn``, `nn.MultiheadAttention`'s ``in_proj_weight``) stands
for all three. Its output projection is a child (``o``, ``out_proj``, ``c_proj``, ``dense`` ...) or, as in
BERT, a Linear of the parent module (``attention.output.dense``) that maps the heads back to the hidden size.
Head size and head count come from the module's own attributes (``head_dim``, ``attention_head_size``,
``key_value_proj_dim`` ...), else the config, and are checked against the projection widths.

A block is the element of a ModuleList / Sequential that holds an attention module and a feed-forward
Linear (T5's ``block.N``, not its ``block.N.layer.0``); blocks are numbered in model order. The FFN of a
block is found by shape among its Linears outside attention: hidden -> I then I -> hidden, with a gate when
two layers widen (Llama's gate/up, T5 v1.1's wi_0/wi_1). In a block the first attention is self-attention
and a later one (or one named ``encoder_attn``, ``EncDecAttention``, ``crossattention`` ...) is
cross-attention. Head layers are the Linears outside blocks that come after them (or lie outside the
backbone module, as XLM-R's ``classifier`` registered first): the last of them that maps to ``num_labels``
(or the vocabulary) is the classifier, the others the pooler.

Whether the backend can physically remove heads is per family (`HEAD_REMOVAL_FAMILIES`): their forward
reshapes heads with -1 and reads head counts from attributes that `removal` updates. Other attention
modules are marked ``removable=False`` with a note, so the core refuses ``remove_pruned`` before work.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from torch import nn

from unicompress.backend.types import AttentionInfo, FFNInfo, TransformerStructure

# local child names of the projections; the first matching name wins
_Q = ("query", "q", "q_proj", "q_lin", "wq", "query_proj")
_K = ("key", "k", "k_proj", "k_lin", "wk", "key_proj")
_V = ("value", "v", "v_proj", "v_lin", "wv", "value_proj")
_O = ("o", "o_proj", "out_proj", "out_lin", "wo", "c_proj", "dense", "out", "proj", "output", "o_lin")
#: packed projections whose rows are q | k | v (GPT-2 family: ``split(split_size, dim=2)``)
_PACKED = ("c_attn", "qkv", "qkv_proj", "Wqkv")
_CROSS = ("encoder_attn", "encdecattention", "crossattention", "cross_attn", "cross_attention", "multihead_attn",
          "src_attn")
_HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "key_value_proj_dim", "d_kv", "head_size")
_HEADS_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")
_HIDDEN_ATTRS = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim")
_CONFIG_HEADS = ("num_attention_heads", "num_heads", "n_head", "n_heads", "encoder_attention_heads")

#: transformers model families whose attention `removal.remove_heads` shrinks and keeps working (each one
#: tested: removed logits equal masked logits); the value names the extra step the family needs
HEAD_REMOVAL_FAMILIES: dict[str, str] = {
    "bert": "", "roberta": "", "xlm_roberta": "", "electra": "", "distilbert": "", "vit": "", "deit": "",
    "gpt2": "", "llama": "", "bart": "", "marian": "", "whisper": "", "deberta_v2": "",
    "mpnet": "position_bias",  # the encoder's relative position bias holds every original head
    "t5": "position_bias",  # layer 0 computes a bias for every original head and shares it
}


def conv1d_type() -> Optional[type]:
    """transformers' Conv1D (GPT-2: a Linear with an [in, out] weight), when transformers is loaded."""
    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None) if mod is not None else None


def is_conv1d(module: nn.Module) -> bool:
    cls = conv1d_type()
    return cls is not None and isinstance(module, cls)


def linear_features(module: nn.Module) -> Optional[tuple[int, int]]:
    """(in, out) features of a Linear-like module (Linear, Conv1D, a low-rank pair), else None."""
    from .layers import LowRankLinear  # local: layers imports this module

    if isinstance(module, nn.Linear):
        return int(module.in_features), int(module.out_features)
    if is_conv1d(module):
        return int(module.nx), int(module.nf)
    if isinstance(module, LowRankLinear):
        first, last = linear_features(module[0]), linear_features(module[-1])
        if first and last:
            return first[0], last[1]
    return None


@dataclass(frozen=True)
class FoundAttention(AttentionInfo):
    """One attention module as discovery found it: an `AttentionInfo` before block numbering (``block`` -1,
    ``kind`` not yet decided) plus what removal needs to update the module afterwards."""

    core: str = ""  # the module holding Q/K/V (or the nn.MultiheadAttention)
    module: Optional[nn.Module] = field(default=None, compare=False)
    hidden: int = 0  # input width of the query projection (the block's hidden size)
    cross_named: bool = False
    extra_rows: tuple[str, ...] = ()  # other per-head row layers of the core (DeBERTa's pos_*_proj)

    def numbered(self, block: int, kind: str, removable: bool, note: str) -> AttentionInfo:
        """The plain `AttentionInfo` the structure lists, once the block's number and the kind are known."""
        return AttentionInfo(block, self.query, self.key, self.value, self.output, self.num_heads, self.head_dim,
                             self.num_kv_heads, kind, removable, note)


@dataclass
class Discovery:
    """What discovery found: the structure, plus each attention block's core module for removal."""

    structure: Optional[TransformerStructure]
    cores: dict[int, list[FoundAttention]] = field(default_factory=dict)  # block -> its attention modules

    def found(self, query: str) -> Optional[FoundAttention]:
        """The discovered attention whose query layer is `query`."""
        for items in self.cores.values():
            for f in items:
                if f.query == query:
                    return f
        return None


# ---- helpers ------------------------------------------------------------------------------------------
def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _under(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(prefix + ".")


def _int_attr(obj: Any, names: Iterable[str]) -> Optional[int]:
    for n in names:
        v = getattr(obj, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _config(model: nn.Module) -> Any:
    return getattr(model, "config", None)


def family(module: nn.Module) -> str:
    """``bert`` for a class of ``transformers.models.bert.modeling_bert``; else the defining module's name."""
    parts = type(module).__module__.split(".")
    if len(parts) >= 3 and parts[0] == "transformers" and parts[1] == "models":
        return parts[2]
    return type(module).__module__


def _linear_children(module: nn.Module) -> dict[str, tuple[nn.Module, int, int]]:
    out = {}
    for local, child in module.named_children():
        feats = linear_features(child)
        if feats is not None:
            out[local] = (child, feats[0], feats[1])
    return out


def _first(kids: dict, names: Iterable[str], taken: set) -> Optional[str]:
    lowered = {k.lower(): k for k in kids if k not in taken}
    for n in names:
        if n.lower() in lowered:
            return lowered[n.lower()]
    return None


# ---- attention modules --------------------------------------------------------------------------------
def _head_geometry(module: nn.Module, q_out: int, k_out: int, config: Any) -> Optional[tuple[int, int, Optional[int]]]:
    """(num_heads, head_dim, num_kv_heads or None) from the module's attributes, else the config."""
    d = _int_attr(module, _HEAD_DIM_ATTRS)
    if d is None:
        h = _int_attr(module, _HEADS_ATTRS)
        d = q_out // h if h and q_out % h == 0 else None
    if d is None and config is not None:
        d = _int_attr(config, ("head_dim", "d_kv"))
        if d is None:
            heads, hidden = _int_attr(config, _CONFIG_HEADS), _int_attr(config, _HIDDEN_ATTRS)
            d = hidden // heads if heads and hidden and hidden % heads == 0 else None
    if d is None or q_out % d or k_out % d:
        return None
    heads, kv = q_out // d, k_out // d
    if heads % kv:
        return None
    return heads, d, (kv if kv != heads else None)


def _output_in_parent(model: nn.Module, core: str, width: int, hidden: int) -> Optional[str]:
    """BERT-style: the Linear after the core in its parent that maps `width` (the heads) back to `hidden`."""
    if not core:
        return None
    parent_path = _parent(core)
    parent = model.get_submodule(parent_path) if parent_path else model
    hits = []
    for local, sub in parent.named_modules():
        name = _join(parent_path, local)
        if not local or _under(name, core):
            continue
        feats = linear_features(sub)
        if feats == (width, hidden):
            hits.append((local.rsplit(".", 1)[-1] not in _O, name))
    return sorted(hits)[0][1] if hits else None


def _projections(module: nn.Module, kids: dict) -> Optional[tuple]:
    """(q, k, v, packed, o) child names of an attention module, or None when it is none.

    Q, K and V by their local names, or one packed q|k|v child; an ``*Attention`` class whose three or four
    Linear children have other names is read in definition order (Q, K, V, then O). `o` is only set by
    the order rule (the caller looks the output up by name otherwise).
    """
    if not kids:
        return None
    q, k, v = (_first(kids, names, set()) for names in (_Q, _K, _V))
    if q and k and v:
        return q, k, v, None, None
    packed = _first(kids, _PACKED, set())
    if packed is not None and not (q or k or v) and kids[packed][2] % 3 == 0:
        return packed, packed, packed, packed, None
    ordered = list(kids)
    if packed is None and "attention" in type(module).__name__.lower() and len(ordered) in (3, 4):
        return ordered[0], ordered[1], ordered[2], None, (ordered[3] if len(ordered) == 4 else None)
    return None


def _find_attention(model: nn.Module, path: str, module: nn.Module, config: Any) -> Optional[FoundAttention]:
    cross = path.rsplit(".", 1)[-1].lower() in _CROSS or "cross" in type(module).__name__.lower()
    if isinstance(module, nn.MultiheadAttention):
        if getattr(module, "in_proj_weight", None) is None and not hasattr(module, "in_proj_weight_orig"):
            return None  # separate q/k/v_proj_weight parameters (kdim != embed_dim): not described
        packed = _join(path, "in_proj")
        return FoundAttention(-1, packed, packed, packed, _join(path, "out_proj"), int(module.num_heads),
                              int(module.head_dim), removable=False,
                              note="nn.MultiheadAttention needs num_heads * head_dim == embed_dim, so its heads "
                                   "can be masked (remove_pruned: false) but not removed",
                              core=path, module=module, hidden=int(module.embed_dim), cross_named=cross)
    kids = _linear_children(module)
    picked = _projections(module, kids)
    if picked is None:
        return None
    q, k, v, packed, o = picked
    if packed:
        _, q_in, out3 = kids[packed]
        q_out = k_out = out3 // 3
        taken = {packed}
    else:
        taken = {q, k, v}
        (_, q_in, q_out), (_, k_in, k_out), (_, v_in, v_out) = kids[q], kids[k], kids[v]
        if k_in != v_in or k_out != v_out:
            return None
    geometry = _head_geometry(module, q_out, k_out, config)
    if geometry is None:
        return None
    heads, d, kv = geometry
    o = o or _first(kids, _O, taken)
    if o is not None and kids[o][1] != q_out:
        o = None
    output = _join(path, o) if o else _output_in_parent(model, path, q_out, q_in)
    if output is None:
        return None
    names = [_join(path, n) for n in ((packed,) * 3 if packed else (q, k, v))]
    # relative-position projections with a row block per head (DeBERTa's pos_key_proj / pos_query_proj)
    extra = tuple(_join(path, n) for n, (_, i, out) in kids.items()
                  if n not in taken and n != o and "pos" in n.lower() and out == q_out and i == q_in)
    fam = family(module)
    if fam == "gpt2" and getattr(module, "is_cross_attention", False):
        return None  # K|V packed in c_attn, Q apart in q_attn: not the q|k|v layout
    verified = fam in HEAD_REMOVAL_FAMILIES or type(module).__module__ == "unicompress_torch.models"
    note = "" if verified else (f"{type(module).__name__} ({fam}): unicompress has not verified how this attention "
                                "reshapes its heads, so they can be masked (remove_pruned: false) but not removed")
    return FoundAttention(-1, *names, output, heads, d, kv, removable=verified, note=note, core=path, module=module,
                          hidden=q_in, cross_named=cross, extra_rows=extra)


def find_attention(model: nn.Module) -> list[FoundAttention]:
    """Every attention module of `model`, in module order."""
    config = _config(model)
    out = []
    for path, module in model.named_modules():
        found = _find_attention(model, path, module, config)
        if found is not None:
            out.append(found)
    return out


# ---- blocks, FFNs and the head ----------------------------------------------------------------------------
def _containers(model: nn.Module) -> set[str]:
    from .layers import LowRankLinear

    return {name for name, m in model.named_modules()
            if isinstance(m, (nn.ModuleList, nn.Sequential)) and not isinstance(m, LowRankLinear)}


def _ancestors(path: str) -> list[str]:
    """`path` and its ancestors, innermost first ('' is the root)."""
    parts = path.split(".") if path else []
    return [".".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _unit(found: FoundAttention) -> str:
    """The smallest module holding the attention's projections (BERT: ``layer.N.attention``)."""
    prefix = found.core
    while not _under(found.output, prefix):
        prefix = _parent(prefix)
    return prefix


def _block_of(found: FoundAttention, containers: set[str], has_ffn) -> str:
    unit = _unit(found)
    elements = [a for a in _ancestors(unit) if a and _parent(a) in containers]
    for element in elements:  # innermost element that also holds a feed-forward Linear
        if has_ffn(element):
            return element
    if elements:
        return elements[0]
    parent = _parent(unit) if unit else ""
    return parent if unit and has_ffn(parent) else unit


def _ffn_in_block(linears: list[tuple[str, int, int]], hidden: int) -> Optional[FFNInfo]:
    """hidden -> I (+ a gate of the same shape) then I -> hidden, among the block's non-attention Linears."""
    for j in range(len(linears) - 1, -1, -1):
        down, d_in, d_out = linears[j]
        if d_out != hidden:
            continue
        ups = [(n, i, o) for n, i, o in linears[:j] if i == hidden and o == d_in]
        if len(ups) == 1:
            return FFNInfo(-1, ups[0][0], down)
        if len(ups) == 2:
            gated = [u for u in ups if "gate" in u[0].rsplit(".", 1)[-1].lower() or u[0].endswith("wi_0")]
            gate = gated[0] if len(gated) == 1 else ups[0]
            up = ups[1] if gate is ups[0] else ups[0]
            return FFNInfo(-1, up[0], down, gate=gate[0])
        return None
    return None


def _hidden_size(model: nn.Module, attention: list[FoundAttention]) -> int:
    config = _config(model)
    hidden = _int_attr(config, _HIDDEN_ATTRS) if config is not None else None
    if hidden is None:
        feats = linear_features(model.get_submodule(attention[0].output))
        hidden = feats[1] if feats else 0
    return int(hidden)


def _head_layers(model: nn.Module, linear: list[tuple[str, int, int]], embeddings: set[str], blocks: list[str],
                 block_layers: set[str], order: dict[str, int]) -> tuple[Optional[str], tuple[str, ...]]:
    """(classifier, pooler layers): Linears after the blocks, or outside the backbone module holding them."""
    common = blocks[0]
    for b in blocks[1:]:
        while not _under(b, common):
            common = _parent(common)
    backbone = common.split(".")[0] if "." in common else ""
    block_set = set(blocks)
    last_block_end = max(order[n] for n in order if any(a in block_set for a in _ancestors(n)))
    heads = [(name, out) for name, _, out in linear
             if name not in block_layers and name not in embeddings
             and (order.get(name, -1) > last_block_end or (bool(backbone) and not _under(name, backbone)))]
    if not heads:
        return None, ()
    config = _config(model)
    rest = [(name, out) for name, out in heads if "pooler" not in name.split(".")]
    classifier = None
    for want in (_int_attr(config, ("num_labels",)) if config is not None else None,
                 _int_attr(config, ("vocab_size",)) if config is not None else None):
        hits = [name for name, out in rest if want and out == want]
        if hits:
            classifier = hits[-1]
            break
    if classifier is None and rest:
        classifier = rest[-1][0]
    return classifier, tuple(name for name, _ in heads if name != classifier)


def _architecture(model: nn.Module, attention: list[FoundAttention]) -> str:
    config = _config(model)
    model_type = getattr(config, "model_type", None) if config is not None else None
    if isinstance(model_type, str) and model_type:
        return f"huggingface:{model_type}"
    zoo = getattr(model, "unicompress_zoo", None)
    if zoo:
        return f"unicompress:{zoo}"
    kinds = {type(m).__name__ for m in model.modules()}
    if {"TransformerDecoderLayer", "TransformerEncoderLayer"} <= kinds:
        return "torch:Transformer"
    for cls in ("TransformerDecoderLayer", "TransformerEncoderLayer"):
        if cls in kinds:
            return f"torch:{cls}"
    if any(isinstance(f.module, nn.MultiheadAttention) for f in attention):
        return "torch:MultiheadAttention"
    return f"torch:{type(model).__name__}"


def _shared_blocks(model: nn.Module, n_blocks: int) -> bool:
    """ALBERT-style weight sharing: one layer group run more times than there are distinct blocks."""
    config = _config(model)
    if config is None or getattr(config, "num_hidden_groups", None) is None:
        return False
    depth = _int_attr(config, ("num_hidden_layers",))
    return bool(depth and depth > n_blocks)


def _linear_layers(model: nn.Module, records: list) -> list[tuple[str, int, int]]:
    """(name, in, out) of the Linear-like layers in module order; a low-rank pair counts as the one layer it
    replaced (its parts ``<name>.0`` / ``<name>.1`` take that layer's role through `assign_roles`)."""
    from .layers import LowRankLinear

    low_rank = {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
    out, seen = [], set()
    for r in records:
        if r.kind != "linear":
            continue
        base = r.name.rsplit(".", 1)[0] if "." in r.name else ""
        if base in low_rank:
            if base not in seen:
                seen.add(base)
                feats = linear_features(low_rank[base])
                out.append((base, feats[0], feats[1]))
            continue
        out.append((r.name, r.shape[1], r.shape[0]))
    return out


def discover(model: nn.Module, records: Optional[list] = None) -> Discovery:
    """The structure of `model` (None when it has no attention module), with each block's attention cores.

    `records` are the adapter's layer records (`layers.records`), passed in to avoid a second walk.
    """
    from . import layers as L

    records = records if records is not None else L.records(model)
    found = find_attention(model)
    if not found:
        return Discovery(None)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    containers = _containers(model)
    attention_layers = {n for f in found for n in f.layers}
    linear = _linear_layers(model, records)

    cores = {f.core for f in found}
    outside = {n for n, _, _ in linear  # Linears that are no attention projection and lie in no attention module
               if n not in attention_layers and not any(a in cores for a in _ancestors(n))}

    def outside_attention(name: str) -> bool:
        return name in outside

    def has_ffn(block: str) -> bool:
        return any(_under(n, block) for n in outside)

    by_block: dict[str, list[FoundAttention]] = {}
    for f in found:
        by_block.setdefault(_block_of(f, containers, has_ffn), []).append(f)
    blocks = sorted(by_block, key=lambda b: order.get(b, -1))
    shared = _shared_blocks(model, len(blocks))
    depth = _int_attr(_config(model), ("num_hidden_layers",)) if shared else None
    shared_note = (f"blocks share one set of weights (the config runs {depth} layers on {len(blocks)} distinct "
                   "block(s)): pruning one block prunes all of them, so its units can be masked "
                   "(remove_pruned: false) but not removed") if shared else ""
    hidden = _hidden_size(model, found)
    attention, ffn, by_number = [], [], {}
    block_layers: set[str] = set(attention_layers)
    for i, block in enumerate(blocks):
        items = sorted(by_block[block], key=lambda f: order.get(f.core, -1))
        by_number[i] = items
        for j, f in enumerate(items):
            kind = "cross" if (f.cross_named or j > 0) else "self"
            removable, note = (False, shared_note) if shared else (f.removable, f.note)
            attention.append(f.numbered(i, kind, removable, note))
        rest = [(n, i_, o) for n, i_, o in linear if _under(n, block) and outside_attention(n)]
        pair = _ffn_in_block(rest, items[0].hidden or hidden)
        if pair is not None:
            ffn.append(FFNInfo(i, pair.ffn_in, pair.ffn_out, pair.gate, removable=not shared, note=shared_note))
            block_layers.update(pair.layers)
    for block in blocks:
        block_layers.update(n for n, _, _ in linear if _under(n, block))
    from unicompress.specs.selector import LayerRole

    embedding_names = [r.name for r in records if r.role is LayerRole.embedding]
    classifier, pooler = _head_layers(model, linear, set(embedding_names), blocks, block_layers, order)
    embeddings = tuple(n for n in embedding_names if n != classifier)
    structure = TransformerStructure(
        hidden_size=hidden, num_layers=len(blocks), attention=tuple(attention), ffn=tuple(ffn),
        classifier=classifier, embeddings=embeddings, pooler=pooler, shared_blocks=shared, source="discovered",
        architecture=_architecture(model, found))
    return Discovery(structure, by_number)
