"""What a pruning stage touches, as torch modules and parameters: the core's plan resolved to weights.

The plan (`ctx.plan`, `unicompress.planner`) names the selected tensors, the attention blocks and the FFN
pairs; this module only finds their modules. Weights are read in the neutral [out, in] layout (a
transformers `Conv1D` through its transpose).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from unicompress.backend.plan import StagePlan
from unicompress.specs import Granularity, PruningSpec

from . import layers as L
from .discovery import discover


@dataclass
class WeightRef:
    """One weight tensor pruned as a whole (unstructured, n_m, block, or rows of a lone Linear).

    `transposed`: the parameter is stored [in, out] (transformers Conv1D); `weight()` and masks are in the
    neutral [out, in] layout either way.
    """

    name: str
    module: nn.Module
    param: str
    transposed: bool = False

    def weight(self) -> torch.Tensor:
        """The effective weight (mask applied) in the neutral [out, in] layout."""
        return L.effective_weight(self.module, self.param, self.transposed)


#: per-weight importance (>= 0), same shape as the neutral weight
Importance = Callable[[WeightRef], torch.Tensor]


def magnitude(t: WeightRef) -> torch.Tensor:
    """The magnitude criterion: |w|."""
    return t.weight().abs()


@dataclass
class FFNPair:
    """FFN neurons: rows of `ffn_in` (and its bias, and of the `gate` of a gated FFN), columns of `ffn_out`."""

    block: int
    ffn_in: WeightRef
    ffn_out: WeightRef
    gate: Optional[WeightRef] = None

    @property
    def inputs(self) -> list[WeightRef]:
        """The row-pruned projections: `ffn_in`, and the `gate` of a gated FFN."""
        return [self.ffn_in] + ([self.gate] if self.gate is not None else [])


@dataclass
class Heads:
    """Attention heads of one block: rows of Q/K/V (and their biases), columns of O.

    Under grouped-query attention (`num_kv_heads` < `num_heads`) only the query rows and the output columns
    belong to a head. `core` is the attention module (its head counts change on removal), `extra` other
    per-head row projections it holds (DeBERTa's pos_key_proj), removed with the heads.
    """

    block: int
    q: WeightRef
    k: WeightRef
    v: WeightRef
    o: WeightRef
    num_heads: int
    head_dim: int
    self_attention: nn.Module  # the key of this block's gate / unit scores
    packed: bool = False  # q, k, v are one projection (rows q | k | v): MHA in_proj, GPT-2 c_attn
    num_kv_heads: Optional[int] = None
    core: Optional[nn.Module] = None
    extra: tuple[WeightRef, ...] = ()

    @property
    def gqa(self) -> bool:
        """Grouped-query attention: fewer K/V heads than query heads."""
        return self.num_kv_heads is not None and self.num_kv_heads != self.num_heads

    def qkv(self, imp: Importance) -> list[torch.Tensor]:
        """Importance of the Q, K and V weights (slices of the packed projection when packed)."""
        if self.packed:
            w = imp(self.q)
            return list(w.chunk(3, dim=0))
        return [imp(self.q), imp(self.k), imp(self.v)]


@dataclass
class Targets:
    """Everything one pruning stage masks: whole tensors, FFN pairs, or attention blocks."""

    granularity: Granularity
    tensors: list[WeightRef] = field(default_factory=list)
    ffn: list[FFNPair] = field(default_factory=list)
    heads: list[Heads] = field(default_factory=list)

    def all_tensors(self) -> list[WeightRef]:
        """Every weight tensor the masks touch (for the achieved-sparsity measure)."""
        out = list(self.tensors)
        for p in self.ffn:
            out += p.inputs + [p.ffn_out]
        for h in self.heads:
            out += [h.q, h.o] if h.gqa else [h.q, h.k, h.v, h.o]
        unique: dict = {}  # a packed projection is q, k and v at once: count it once
        for t in out:
            unique.setdefault((id(t.module), t.param), t)
        return list(unique.values())


def resolve_targets(model: nn.Module, spec: PruningSpec, plan: StagePlan) -> Targets:
    """The tensors, FFN pairs or heads of the plan, as torch modules and parameters (no selection here)."""
    g = spec.granularity
    records = L.by_name(model)
    targets = Targets(g)

    def ref(name: str) -> WeightRef:
        # the planner refuses factorised projections and unknown layers; a miss means the plan is stale
        if name not in records:
            raise ValueError(f"the plan names layer {name}, which this model does not hold: plan the stage on "
                             "the model it runs on")
        rec = records[name]
        return WeightRef(rec.name, rec.module, rec.param, rec.transposed)

    if g in (Granularity.unstructured, Granularity.n_m, Granularity.block):
        targets.tensors = [ref(n) for n in plan.selected]
    elif g is Granularity.neuron:
        targets.ffn = [FFNPair(f.block, ref(f.ffn_in), ref(f.ffn_out), ref(f.gate) if f.gate else None)
                       for f in plan.ffn]
        targets.tensors = [ref(n) for n in plan.rows]
    elif g is Granularity.head:
        found = discover(model, list(records.values())) if plan.attention else None
        for a in plan.attention:
            q, k, v, o = (ref(n) for n in (a.query, a.key, a.value, a.output))
            hit = found.found(a.query) if found is not None else None
            core = hit.module if hit is not None else _parent_module(model, a.query)
            extra = tuple(ref(n) for n in hit.extra_rows if n in records) if hit is not None else ()
            targets.heads.append(Heads(a.block, q, k, v, o, a.num_heads, a.head_dim, q.module, a.packed,
                                       a.num_kv_heads, core, extra))
    if not (targets.tensors or targets.ffn or targets.heads):
        # the planner accepts an empty plan when `allow_partial` skipped every chosen layer
        raise ValueError(f"the plan of this {g.value!r} pruning stage holds no layer (selector "
                         f"{spec.selector.model_dump()})")
    return targets


def _parent_module(model: nn.Module, name: str) -> Optional[nn.Module]:
    """The module holding a layer (for a packed ``<mha>.in_proj``: the nn.MultiheadAttention)."""
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    try:
        return model.get_submodule(parent)
    except AttributeError:
        return None
