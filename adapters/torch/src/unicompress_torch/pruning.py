"""Pruning with torch.nn.utils.prune: masks from torch's pruning methods, made permanent with prune.remove.

Granularities (the unit that is pruned) and how torch does them:
  - unstructured: `prune.l1_unstructured` per layer, `prune.global_unstructured` across layers
  - n_m: `NMPruning`, a `prune.BasePruningMethod` subclass (torch's extension point) that zeroes the N
    smallest |w| of every M consecutive weights along the input dim
  - neuron: `prune.ln_structured` (n=1 or 2, dim=0) on the FFN-in rows, with the matching FFN-out columns
    (and FFN-in bias) masked by `prune.custom_from_mask`; a selected Linear outside an FFN pair loses rows
  - head: head scores (norm of the head's Q/K/V rows and O columns), masks by `prune.custom_from_mask`
  - block: `BlockPruning`, a `prune.BasePruningMethod` subclass over tiles of the [out, in] weight
Criteria: magnitude; movement (scores accumulate -w * grad during fine-tuning, Sanh et al. 2020);
l1_regularized (L1 / group-L1 penalty during training, then magnitude); l0_regularized (hard-concrete
gates, Louizos et al. 2018, as `torch.nn.utils.parametrize` parametrizations; units ranked by their
gate's log-alpha at the end). A polynomial schedule updates the masks during training
(`GradualPruner`, usable in your own loop too).
What is pruned is the core's plan (`ctx.plan`, `unicompress.planner`): the selected tensors, the planned
attention blocks and FFN pairs, and the lone Linears (`plan.rows`); nothing is chosen here. Weights are
handled in the neutral [out, in] layout (a transformers `Conv1D` is masked through its transpose).
Grouped-query attention (`num_kv_heads` < heads) prunes query heads and their output columns, the same
number in every K/V group (K and V are shared, so they stay). Gated FFNs prune the neuron's row of the
gate as well. With ``remove_pruned`` (head/neuron) the pruned units are physically removed (`removal`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from unicompress.backend.adapter import StageContext
from unicompress.backend.plan import StagePlan
from unicompress.backend.types import TaskData
from unicompress.specs import Criterion, Granularity, Norm, PruningSpec, ScheduleKind, Scope

from . import layers as L
from . import removal
from .discovery import discover
from .planning import stage_plan
from .training import cross_entropy_loss, train_loop


# ---- torch pruning methods (the BasePruningMethod extension point) ------------------------------------
class NMPruning(prune.BasePruningMethod):
    """N:M sparsity: in every M consecutive weights along the last (input) dim, zero the N smallest |w|.

    Example: ``NMPruning.apply(linear, "weight", n=2, m=4)``.
    """

    PRUNING_TYPE = "unstructured"

    def __init__(self, n: int, m: int):
        if not 0 < n < m:
            raise ValueError(f"N:M needs 0 < n < m, got n={n}, m={m}")
        self.n, self.m = n, m

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        if t.shape[-1] % self.m:
            raise ValueError(f"input size {t.shape[-1]} is not a multiple of m={self.m}")
        groups = t.detach().abs().reshape(-1, self.m)
        lowest = torch.argsort(groups, dim=1, stable=True)[:, :self.n]
        mask = torch.ones_like(groups)
        mask.scatter_(1, lowest, 0.0)
        return default_mask * mask.reshape(t.shape)

    @classmethod
    def apply(cls, module: nn.Module, name: str, n: int, m: int, importance_scores=None):  # noqa: D102
        return super().apply(module, name, n=n, m=m, importance_scores=importance_scores)


class BlockPruning(prune.BasePruningMethod):
    """Zero the round(amount * n_blocks) tiles of lowest L1/L2 norm (edge tiles may be smaller)."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, block_shape: Sequence[int], amount: float, norm: str = "l2"):
        self.block_shape, self.amount, self.norm = tuple(block_shape), float(amount), norm

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        scores = block_scores(t.detach(), self.block_shape, self.norm)
        keep = lowest_removed(scores.reshape(-1), self.amount).reshape(scores.shape)
        return default_mask * expand_blocks(keep, self.block_shape, t.shape).to(default_mask.dtype)

    @classmethod
    def apply(cls, module: nn.Module, name: str, block_shape, amount: float, norm: str = "l2",
              importance_scores=None):  # noqa: D102
        return super().apply(module, name, block_shape=block_shape, amount=amount, norm=norm,
                             importance_scores=importance_scores)


# ---- scoring helpers ----------------------------------------------------------------------------------
def lowest_removed(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Keep-vector (bool) over 1-D `scores` without the round(amount * n) lowest (stable order)."""
    k = int(round(amount * scores.numel()))
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(scores.double(), stable=True)[:k]] = False
    return keep


def group_norm(x: torch.Tensor, norm: str, dim) -> torch.Tensor:
    x = x.double()
    return x.abs().sum(dim=dim) if norm == "l1" else torch.sqrt((x * x).sum(dim=dim))


def block_scores(w: torch.Tensor, block_shape: Sequence[int], norm: str) -> torch.Tensor:
    """Norm of each tile of a 2-D tensor (zero-padded at the edges): [n_row_blocks, n_col_blocks]."""
    br, bc = block_shape
    rows, cols = w.shape
    nr, nc = -(-rows // br), -(-cols // bc)
    padded = torch.zeros(nr * br, nc * bc, dtype=torch.float64)
    padded[:rows, :cols] = w.double()
    return group_norm(padded.reshape(nr, br, nc, bc), norm, dim=(1, 3))


def expand_blocks(keep: torch.Tensor, block_shape: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    br, bc = block_shape
    full = keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)
    return full[:shape[0], :shape[1]]


# ---- what a spec prunes -------------------------------------------------------------------------------
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
        return L.effective_weight(self.module, self.param, self.transposed)


@dataclass
class FFNPair:
    """FFN neurons: rows of `ffn_in` (and its bias, and of the `gate` of a gated FFN), columns of `ffn_out`."""

    block: int
    ffn_in: WeightRef
    ffn_out: WeightRef
    gate: Optional[WeightRef] = None

    @property
    def inputs(self) -> list[WeightRef]:
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
        return self.num_kv_heads is not None and self.num_kv_heads != self.num_heads

    def qkv(self, imp: "Importance") -> list[torch.Tensor]:
        """Importance of the Q, K and V weights (slices of the packed projection when packed)."""
        if self.packed:
            w = imp(self.q)
            return list(w.chunk(3, dim=0))
        return [imp(self.q), imp(self.k), imp(self.v)]


@dataclass
class Targets:
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


def _ref(rec: L.LayerRecord) -> WeightRef:
    return WeightRef(rec.name, rec.module, rec.param, rec.transposed)


def resolve_targets(model: nn.Module, spec: PruningSpec, plan: StagePlan) -> Targets:
    """The tensors, FFN pairs or heads of the plan, as torch modules and parameters (no selection here)."""
    g = spec.granularity
    records = L.by_name(model)
    targets = Targets(g)

    def ref(name: str) -> WeightRef:
        if name not in records:
            factorised = f"{name}.0" in records
            raise ValueError(f"granularity {g.value!r} needs the plain layer {name}, but "
                             + ("it was factorised (low_rank); prune heads/neurons before the low_rank stage"
                                if factorised else "the model has no such layer"))
        return _ref(records[name])

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


# ---- importance ------------------------------------------------------------------------------------------
Importance = Callable[[WeightRef], torch.Tensor]  # per-weight importance (>= 0), same shape as the weight


def magnitude(t: WeightRef) -> torch.Tensor:
    return t.weight().abs()


# ---- masks from importance ----------------------------------------------------------------------------
def _norm_p(spec: PruningSpec) -> int:
    return 1 if spec.norm is Norm.l1 else 2


def head_unit_scores(h: Heads, imp: Importance, norm: str) -> torch.Tensor:
    """Score of each head: the norm of its Q/K/V rows and O columns (of importance values)."""
    d = h.head_dim
    o = imp(h.o)
    rows = [imp(h.q)] if h.gqa else h.qkv(imp)
    heads = rows[0].shape[0] // d
    parts = [x.reshape(heads, d, -1) for x in rows] + [o.reshape(o.shape[0], heads, d).transpose(0, 1)]
    if norm == "l1":
        return sum(p.double().abs().sum(dim=(1, 2)) for p in parts)
    return torch.sqrt(sum((p.double() ** 2).sum(dim=(1, 2)) for p in parts))


def compute_masks(targets: Targets, spec: PruningSpec, amount: float, imp: Importance,
                  unit_scores: Optional[dict] = None) -> dict[tuple[int, str], tuple[WeightRef, torch.Tensor]]:
    """Masks (1 = kept) for every touched tensor at sparsity `amount` (n_m: `amount` = N'/M).

    `unit_scores` may give precomputed scores per FFN pair / head block / block tensor (e.g. L0 gates).
    Returns {(id(module), param): (tensor, mask)}; biases of neurons/heads included.
    """
    g, norm = spec.granularity, spec.norm.value
    out: dict = {}

    def put(t: WeightRef, mask: torch.Tensor, param: Optional[str] = None) -> None:
        p = param or t.param
        out[(id(t.module), p)] = (WeightRef(t.name, t.module, p, t.transposed and p == t.param),
                                  mask.to(torch.float32))

    if g is Granularity.unstructured:
        scores = [imp(t) for t in targets.tensors]
        if spec.scope is Scope.global_:
            flat = torch.cat([s.reshape(-1) for s in scores])
            keep = prune.L1Unstructured(amount).compute_mask(flat, torch.ones_like(flat))
            start = 0
            for t, s in zip(targets.tensors, scores):
                put(t, keep[start:start + s.numel()].reshape(s.shape))
                start += s.numel()
        else:
            for t, s in zip(targets.tensors, scores):
                put(t, prune.L1Unstructured(amount).compute_mask(s, torch.ones_like(s)))
    elif g is Granularity.n_m:
        n = int(math.floor(amount * spec.m + 1e-9))
        for t in targets.tensors:
            s = imp(t)
            put(t, NMPruning(n, spec.m).compute_mask(s, torch.ones_like(s)) if n > 0 else torch.ones_like(s))
    elif g is Granularity.block:
        scores = [(unit_scores or {}).get(id(t.module)) for t in targets.tensors]
        scores = [s if s is not None else block_scores(imp(t), spec.block_shape, norm)
                  for t, s in zip(targets.tensors, scores)]
        keeps = _keep_units(scores, amount, spec.scope, at_least_one=False)
        for t, keep in zip(targets.tensors, keeps):
            put(t, expand_blocks(keep, spec.block_shape, t.weight().shape))
    elif g is Granularity.neuron:
        pair_scores = [(unit_scores or {}).get(id(p.ffn_in.module)) for p in targets.ffn]
        pair_scores = [s if s is not None else group_norm(torch.cat([imp(t) for t in p.inputs], dim=1), norm, dim=1)
                       for p, s in zip(targets.ffn, pair_scores)]
        lone_scores = [(unit_scores or {}).get(id(t.module)) for t in targets.tensors]
        lone_scores = [s if s is not None else group_norm(imp(t), norm, dim=1)
                       for t, s in zip(targets.tensors, lone_scores)]
        keeps = _keep_units(pair_scores + lone_scores, amount, spec.scope, at_least_one=True)
        for p, keep in zip(targets.ffn, keeps[:len(targets.ffn)]):
            rows = keep.to(torch.float32)
            for t in p.inputs:
                put(t, rows[:, None].expand_as(t.weight()).clone())
                if getattr(t.module, "bias", None) is not None:
                    put(t, rows.clone(), "bias")
            w_out = p.ffn_out.weight()
            put(p.ffn_out, rows[None, :].expand_as(w_out).clone())
        for t, keep in zip(targets.tensors, keeps[len(targets.ffn):]):
            rows = keep.to(torch.float32)
            put(t, rows[:, None].expand_as(t.weight()).clone())
            if getattr(t.module, "bias", None) is not None:
                put(t, rows.clone(), "bias")
    elif g is Granularity.head:
        scores = [(unit_scores or {}).get(id(h.self_attention)) for h in targets.heads]
        scores = [s if s is not None else head_unit_scores(h, imp, norm) for h, s in zip(targets.heads, scores)]
        keeps = _keep_heads(targets.heads, scores, amount, spec.scope)
        for h, keep in zip(targets.heads, keeps):
            rows = keep.repeat_interleave(h.head_dim).to(torch.float32)
            if h.packed:  # one mask over the packed rows q | k | v
                rows3 = torch.cat([rows, rows, rows])
                put(h.q, rows3[:, None].expand_as(h.q.weight()).clone())
                bias = "in_proj_bias" if h.q.param == "in_proj_weight" else "bias"
                if getattr(h.q.module, bias, None) is not None:
                    put(h.q, rows3.clone(), bias)
            for t in (() if h.packed else (h.q,) if h.gqa else (h.q, h.k, h.v)):
                put(t, rows[:, None].expand_as(t.weight()).clone())
                if getattr(t.module, "bias", None) is not None:
                    put(t, rows.clone(), "bias")
            put(h.o, rows[None, :].expand_as(h.o.weight()).clone())
    return out


def _keep_heads(heads: list[Heads], scores: list[torch.Tensor], amount: float, scope: Scope) -> list[torch.Tensor]:
    """Keep-vectors of heads. Grouped-query blocks drop round(amount * group) query heads in every K/V group
    (whatever the scope), so each group keeps as many heads as the others and removal stays possible."""
    plain = [i for i, h in enumerate(heads) if not h.gqa]
    out: list = [None] * len(heads)
    for i, keep in zip(plain, _keep_units([scores[i] for i in plain], amount, scope, at_least_one=True)):
        out[i] = keep
    for i, h in enumerate(heads):
        if h.gqa:
            groups = scores[i].reshape(h.num_kv_heads, -1)
            out[i] = torch.cat([lowest_removed(g, amount) for g in groups])
            if not out[i].any():
                out[i][int(torch.argmax(scores[i]))] = True
    return out


def _keep_units(scores: list[torch.Tensor], amount: float, scope: Scope, at_least_one: bool) -> list[torch.Tensor]:
    """Keep-vectors per group of unit scores: per group, or one ranking across all (global).

    Structured global pruning keeps at least one unit per layer (`at_least_one`) so no block is emptied.
    """
    if not scores:
        return []
    if scope is not Scope.global_ or len(scores) == 1:
        return [lowest_removed(s.reshape(-1), amount).reshape(s.shape) for s in scores]
    flat = torch.cat([s.reshape(-1).double() for s in scores])
    if at_least_one:  # protect the best unit of every group by lifting its score above all others
        bonus, start = torch.zeros_like(flat), 0
        for s in scores:
            bonus[start + int(torch.argmax(s.reshape(-1)))] = float("inf")
            start += s.numel()
        flat = torch.where(torch.isinf(bonus), torch.full_like(flat, float("inf")), flat)
    keep = lowest_removed(flat, amount)
    out, start = [], 0
    for s in scores:
        out.append(keep[start:start + s.numel()].reshape(s.shape))
        start += s.numel()
    return out


def install_masks(masks: dict) -> None:
    """Put masks on their tensors: `prune.custom_from_mask` the first time, in place afterwards
    (so an optimizer keeps training the same `*_orig` parameter)."""
    for t, mask in masks.values():
        if t.transposed:  # the mask is neutral [out, in]; the parameter is [in, out]
            mask = mask.t().contiguous()
        current = getattr(t.module, t.param + "_mask", None)
        if current is None:
            prune.custom_from_mask(t.module, t.param, mask)
        else:
            with torch.no_grad():
                # a stored mask only tightens: gradual pruning never revives a pruned weight
                current.mul_(mask)
                setattr(t.module, t.param, getattr(t.module, t.param + "_orig") * current)


def make_permanent(model: nn.Module) -> None:
    """`prune.remove` every pruning hook: the zeros become part of the plain parameters."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):  # PruningContainer included
                prune.remove(module, hook._tensor_name)


def achieved_sparsity(targets: Targets) -> float:
    """Fraction of zeros over every weight tensor the spec touches."""
    zeros = total = 0
    seen = set()
    for t in targets.all_tensors():
        if (id(t.module), t.param) in seen:
            continue
        seen.add((id(t.module), t.param))
        w = t.weight()
        zeros += w.numel() - L.nonzero_count(w)
        total += w.numel()
    return zeros / total if total else 0.0


# ---- one-shot magnitude through the native functions ---------------------------------------------------
def prune_one_shot(model: nn.Module, spec: PruningSpec, targets: Targets) -> None:
    """Magnitude pruning in one go with torch.nn.utils.prune's own entry points where one fits."""
    g = spec.granularity
    if g is Granularity.unstructured and not _has_hooks(targets):
        if spec.scope is Scope.global_:
            prune.global_unstructured([(t.module, t.param) for t in targets.tensors],
                                      pruning_method=prune.L1Unstructured, amount=spec.target_sparsity)
        else:
            for t in targets.tensors:
                prune.l1_unstructured(t.module, t.param, amount=spec.target_sparsity)
    elif g is Granularity.n_m and not _has_hooks(targets):
        for t in targets.tensors:
            NMPruning.apply(t.module, t.param, n=spec.n, m=spec.m)
    elif g is Granularity.block and spec.scope is Scope.per_layer and not _has_hooks(targets):
        for t in targets.tensors:
            BlockPruning.apply(t.module, t.param, block_shape=spec.block_shape, amount=spec.target_sparsity,
                               norm=spec.norm.value)
    elif g is Granularity.neuron and spec.scope is Scope.per_layer and not _has_hooks(targets):
        for p in targets.ffn:
            prune.ln_structured(p.ffn_in.module, p.ffn_in.param, amount=spec.target_sparsity, n=_norm_p(spec), dim=0)
            rows = p.ffn_in.module.weight_mask[:, 0].clone()
            if getattr(p.ffn_in.module, "bias", None) is not None:
                prune.custom_from_mask(p.ffn_in.module, "bias", rows)
            prune.custom_from_mask(p.ffn_out.module, p.ffn_out.param,
                                   rows[None, :].expand_as(p.ffn_out.weight()).clone())
        for t in targets.tensors:
            prune.ln_structured(t.module, t.param, amount=spec.target_sparsity, n=_norm_p(spec), dim=0)
            if getattr(t.module, "bias", None) is not None:
                prune.custom_from_mask(t.module, "bias", t.module.weight_mask[:, 0].clone())
    else:  # global structured, heads, or tensors already under a mask
        install_masks(compute_masks(targets, spec, spec.target_sparsity, magnitude))


def _has_hooks(targets: Targets) -> bool:
    """True when torch's own entry points cannot be used as they are: masks already on, a transposed
    (Conv1D) weight whose input dim is not the last one, or a gated FFN (rows of two layers at once)."""
    return any(hasattr(t.module, t.param + "_mask") or t.transposed for t in targets.all_tensors()) \
        or any(p.gate is not None for p in targets.ffn)


# ---- schedules and training-time criteria ---------------------------------------------------------------
def polynomial_sparsity(step: int, final: float, initial: float, begin: int, end: int, power: float) -> float:
    """Zhu & Gupta's schedule (TFMOT PolynomialDecay): the sparsity the masks should have at `step`."""
    progress = min(max((step - begin) / (end - begin), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** power


class HardConcreteGate(nn.Module):
    """L0 gates (Louizos et al. 2018) as a `torch.nn.utils.parametrize` parametrization of a weight.

    One gate per unit; `expand` maps the gate vector to the weight's shape. In training each step
    draws z = clamp(sigmoid((log u - log(1-u) + log_alpha) / beta) * (zeta - gamma) + gamma, 0, 1);
    in eval z is the deterministic gate. `mask` (1 = kept) lets a schedule switch units off.
    """

    beta, gamma, zeta = 2.0 / 3.0, -0.1, 1.1

    def __init__(self, units: tuple[int, ...], expand: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full(units, 3.0))  # starts near 1 (gate open)
        self.register_buffer("mask", torch.ones(units))
        self.expand = expand
        self._z: Optional[torch.Tensor] = None

    def resample(self) -> None:
        self._z = None

    def gate(self) -> torch.Tensor:
        if self.training:
            if self._z is None:
                u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
                s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + self.log_alpha) / self.beta)
                self._z = (s * (self.zeta - self.gamma) + self.gamma).clamp(0, 1)
            z = self._z
        else:
            z = (torch.sigmoid(self.log_alpha) * (self.zeta - self.gamma) + self.gamma).clamp(0, 1)
        return z * self.mask

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.expand(self.gate())

    def penalty(self) -> torch.Tensor:
        """Expected number of open gates (the L0 norm's relaxation)."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.gamma / self.zeta)).sum()


class GradualPruner:
    """Masks that follow a schedule during training: call `step(step)` at each optimizer step.

    Works in your own loop::

        pruner = GradualPruner(model, spec)
        for step in range(spec.training.steps):
            pruner.step(step)
            loss = ...; loss.backward(); pruner.after_backward(); opt.step()
        pruner.finish(model)

    It logs ``ctx.log("sparsity", step, achieved)`` at every mask update. The criterion decides
    what ranks the units: |w| (magnitude, l1_regularized), accumulated -w * grad (movement), or
    the L0 gates' log-alpha (l0_regularized, gates added to the model as parametrizations).
    """

    def __init__(self, model: nn.Module, spec: PruningSpec, ctx: Optional[StageContext] = None):
        self.model, self.spec, self.ctx = model, spec, ctx or StageContext()
        self.targets = resolve_targets(model, spec, stage_plan(model, spec, self.ctx))
        self.criterion = spec.criterion
        self.movement: dict[tuple[int, str], torch.Tensor] = {}
        self.gates: dict[int, HardConcreteGate] = {}
        self.current = 0.0
        if self.criterion is Criterion.l0_regularized:
            self._add_gates()

    # -- schedule
    def sparsity_at(self, step: int) -> float:
        """Target sparsity of the masks at `step` (one-shot schedules prune at the last step only)."""
        sch, final = self.spec.schedule, self.spec.target_sparsity
        if sch.kind is ScheduleKind.polynomial:
            if step < sch.begin_step:
                return 0.0
            return polynomial_sparsity(step, final, sch.initial_sparsity, sch.begin_step, sch.end_step, sch.power)
        return 0.0

    def due(self, step: int) -> bool:
        sch = self.spec.schedule
        if sch.kind is not ScheduleKind.polynomial or step < sch.begin_step or step > sch.end_step:
            return False
        return (step - sch.begin_step) % sch.frequency == 0 or step == sch.end_step

    def step(self, step: int) -> Optional[float]:
        """Update the masks if the schedule says so; returns the achieved sparsity when it did."""
        for g in self.gates.values():
            g.resample()
        if not self.due(step):
            return None
        return self.update(step, self.sparsity_at(step))

    def update(self, step: int, amount: float) -> float:
        """Set every mask to sparsity `amount` now (ranked by the criterion) and log the achieved sparsity."""
        masks = compute_masks(self.targets, self.spec, amount, self.importance, self._unit_scores())
        if self.gates:
            self._gate_masks(masks)
        else:
            install_masks(masks)
        self.current = achieved_sparsity(self.targets) if not self.gates else self._gated_sparsity(masks)
        self.ctx.log("sparsity", step, self.current)
        return self.current

    # -- criteria
    def importance(self, t: WeightRef) -> torch.Tensor:
        gate = self.gates.get(id(t.module))
        if gate is not None and self.spec.granularity in (Granularity.unstructured, Granularity.n_m):
            la = gate.log_alpha.detach()
            # rank weights by their gate (>= 0 for torch's L1 methods); switched-off gates rank lowest
            return (la - la.min() + 1e-6) * gate.mask
        if self.criterion is Criterion.movement and self.movement:
            s = self.movement.get((id(t.module), t.param))
            if s is not None:
                s = s.t() if t.transposed else s  # scores follow the parameter's [in, out] layout
                w = t.weight()
                # shift to >= 0 (torch's L1 methods rank |score|); pruned weights stay lowest
                shifted = s - s.min() + 1e-12
                return torch.where(w == 0, torch.zeros_like(shifted), shifted)
        return magnitude(t)

    def after_backward(self, step: int = 0) -> None:
        """Movement: accumulate -w * dL/dw for every touched weight (call between backward and step)."""
        if self.criterion is not Criterion.movement:
            return
        for t in self.targets.all_tensors():
            orig = getattr(t.module, t.param + "_orig", None)
            param = orig if orig is not None else getattr(t.module, t.param)
            if param.grad is None:
                continue
            key = (id(t.module), t.param)
            score = -(param.detach() * param.grad.detach())
            self.movement[key] = self.movement.get(key, torch.zeros_like(score)) + score

    def penalty(self) -> torch.Tensor:
        """The regularisation term for l1_regularized (L1 / group L1 of the units) and l0_regularized."""
        lam = self.spec.regularization
        if self.criterion is Criterion.l0_regularized:
            total = sum(g.penalty() for g in self.gates.values())
            count = sum(g.log_alpha.numel() for g in self.gates.values())
            return lam * total / max(count, 1)
        if self.criterion is Criterion.l1_regularized:
            terms = []
            g = self.spec.granularity
            for t in self.targets.all_tensors():
                w = getattr(t.module, t.param)
                w = w.t() if t.transposed else w
                if g in (Granularity.unstructured, Granularity.n_m, Granularity.block):
                    terms.append(w.abs().mean())
                else:  # group lasso over output rows (neurons / head rows) keeps whole units small
                    terms.append(torch.sqrt((w * w).sum(dim=1) + 1e-12).mean())
            return lam * sum(terms)  # a sum over layers: the penalty keeps its strength on deep models
        return torch.zeros(())

    def loss_fn(self, base: Callable = cross_entropy_loss) -> Callable:
        """The task loss plus this criterion's penalty."""
        def loss(model: nn.Module, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
            return base(model, inputs, labels) + self.penalty()
        return loss

    def extra_params(self) -> list[torch.Tensor]:
        return [g.log_alpha for g in self.gates.values()]

    # -- L0 gates
    def _add_gates(self) -> None:
        g = self.spec.granularity
        if g in (Granularity.unstructured, Granularity.n_m):
            for t in self.targets.tensors:
                self._gate(t, t.weight().shape, lambda z: z)
        elif g is Granularity.block:
            for t in self.targets.tensors:
                shape = t.weight().shape
                n_blocks = tuple(-(-s // b) for s, b in zip(shape, self.spec.block_shape))
                bs = self.spec.block_shape
                self._gate(t, n_blocks, lambda z, bs=bs, shape=shape: expand_blocks(z, bs, shape))
        elif g is Granularity.neuron:
            for p in self.targets.ffn:  # gate the neuron's output: the columns of ffn_out
                self._gate(p.ffn_out, (p.ffn_out.weight().shape[1],), lambda z: z[None, :], key=p.ffn_in.module)
            for t in self.targets.tensors:
                self._gate(t, (t.weight().shape[0],), lambda z: z[:, None])
        elif g is Granularity.head:
            for h in self.targets.heads:  # gate each head's output: its columns of O
                d = h.head_dim
                self._gate(h.o, (h.num_heads,), lambda z, d=d: z.repeat_interleave(d)[None, :],
                           key=h.self_attention)

    def _gate(self, t: WeightRef, units, expand, key: Optional[nn.Module] = None) -> None:
        if t.transposed:  # gates expand to the neutral [out, in] shape; the parameter is [in, out]
            expand = (lambda z, inner=expand: inner(z).t())
        gate = HardConcreteGate(tuple(units), expand)
        parametrize.register_parametrization(t.module, t.param, gate)
        self.gates[id(key if key is not None else t.module)] = gate
        gate._target = t  # type: ignore[attr-defined]

    def _unit_scores(self) -> Optional[dict]:
        if not self.gates:
            return None
        # units a schedule switched off already score 0, so later (tighter) masks keep them off
        return {k: (g.log_alpha.detach().double() - g.log_alpha.detach().min().double() + 1e-6) * g.mask.double()
                for k, g in self.gates.items()}

    def _gate_masks(self, masks: dict) -> None:
        """With L0 gates on, a schedule switches gates off rather than adding prune hooks."""
        g = self.spec.granularity
        for key, gate in self.gates.items():
            t = gate._target  # type: ignore[attr-defined]
            _, mask = masks[(id(t.module), t.param)]
            if g in (Granularity.unstructured, Granularity.n_m):
                unit = mask
            elif g is Granularity.block:
                br, bc = self.spec.block_shape
                unit = mask[::br, ::bc]
            elif g is Granularity.neuron:
                unit = mask[0] if t in [p.ffn_out for p in self.targets.ffn] else mask[:, 0]
            else:  # head: the O columns of each head
                unit = mask[0].reshape(gate.log_alpha.shape[0], -1)[:, 0]
            gate.mask.copy_(unit.reshape(gate.mask.shape))

    def _gated_sparsity(self, masks: dict) -> float:
        zeros = total = 0
        for t, mask in masks.values():
            if t.param == "bias":
                continue
            zeros += int((mask == 0).sum())
            total += mask.numel()
        return zeros / total if total else 0.0

    def _remove_gates(self) -> None:
        """Fold the deterministic gates into the weights (eval mode) and drop the parametrizations."""
        self.model.eval()
        for gate in self.gates.values():
            t = gate._target  # type: ignore[attr-defined]
            if parametrize.is_parametrized(t.module, t.param):
                parametrize.remove_parametrizations(t.module, t.param, leave_parametrized=True)

    # -- end
    def finish(self, model: Optional[nn.Module] = None) -> nn.Module:
        """Masks at the target sparsity, made permanent; heads/neurons removed if the spec says so."""
        model = model or self.model
        scores = self._unit_scores()
        final_masks = compute_masks(self.targets, self.spec, self.spec.target_sparsity, self.importance, scores)
        if self.gates:
            self._remove_gates()  # masks are keyed by (module, param): still valid afterwards
        install_masks(final_masks)
        make_permanent(model)
        self.current = achieved_sparsity(self.targets)
        if self.spec.remove_pruned and self.spec.granularity in (Granularity.neuron, Granularity.head):
            remove_pruned_units(model, self.targets)
        return model


# ---- physical removal -----------------------------------------------------------------------------------
def remove_pruned_units(model: nn.Module, targets: Targets) -> None:
    """Physically drop the zeroed FFN neurons and attention heads of `targets` (after `make_permanent`)."""
    removal.remove_units(model, targets.ffn, targets.heads)


# ---- the handler ----------------------------------------------------------------------------------------
def apply_pruning(model: nn.Module, spec: PruningSpec, data: Optional[TaskData], ctx: StageContext) -> nn.Module:
    """PruningSpec handler: one-shot magnitude right away; schedules and training-time criteria train
    with `train_loop` while a `GradualPruner` updates the masks; masks are made permanent at the end."""
    if not spec.trains:
        targets = resolve_targets(model, spec, stage_plan(model, spec, ctx))
        prune_one_shot(model, spec, targets)
        make_permanent(model)
        ctx.log("sparsity", 0, achieved_sparsity(targets))
        if spec.remove_pruned and spec.granularity in (Granularity.neuron, Granularity.head):
            remove_pruned_units(model, targets)
        return model
    pruner = GradualPruner(model, spec, ctx)
    loss = pruner.loss_fn() if spec.criterion in (Criterion.l1_regularized, Criterion.l0_regularized) else None
    train_loop(model, data, spec.training, ctx, loss_fn=loss, on_step=pruner.step,
               extra_params=pruner.extra_params(), after_backward=pruner.after_backward)
    pruner.finish(model)
    steps = spec.training.steps
    if spec.schedule.kind is ScheduleKind.one_shot or not ctx.history.get("sparsity") \
            or ctx.history["sparsity"][-1][0] != steps:
        ctx.log("sparsity", steps, pruner.current)
    return model
