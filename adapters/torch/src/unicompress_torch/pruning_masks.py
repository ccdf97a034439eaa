"""Masks from importance: unit scores, keep-vectors per layer or across layers, and installing them as
torch.nn.utils.prune masks (made permanent with `prune.remove`).

Every function takes the resolved `Targets` (`pruning_targets`) and an importance function, so one-shot
magnitude pruning and every training-time criterion share the same masks.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn.utils import prune

from unicompress.specs import Granularity, PruningSpec, Scope

from . import layers as L
from .pruning_methods import NMPruning, block_scores, expand_blocks, group_norm, lowest_removed
from .pruning_targets import Heads, Importance, Targets, WeightRef

Masks = dict[tuple[int, str], tuple[WeightRef, torch.Tensor]]


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
                  unit_scores: Optional[dict] = None) -> Masks:
    """Masks (1 = kept) for every touched tensor at sparsity `amount` (n_m: `amount` = N'/M).

    `unit_scores` may give precomputed scores per FFN pair / head block / block tensor (e.g. L0 gates).
    Returns {(id(module), param): (tensor, mask)}; biases of neurons/heads included.
    """
    g, norm = spec.granularity, spec.norm.value
    given = unit_scores or {}
    out: Masks = {}

    def put(t: WeightRef, mask: torch.Tensor, param: Optional[str] = None) -> None:
        p = param or t.param
        out[(id(t.module), p)] = (WeightRef(t.name, t.module, p, t.transposed and p == t.param),
                                  mask.to(torch.float32))

    def put_rows(t: WeightRef, rows: torch.Tensor, bias: str = "bias") -> None:
        put(t, rows[:, None].expand_as(t.weight()).clone())
        if getattr(t.module, bias, None) is not None:
            put(t, rows.clone(), bias)

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
        n = int(math.floor(amount * spec.m + 1e-9))  # a scheduled sparsity as N' of M (never above it)
        for t in targets.tensors:
            s = imp(t)
            put(t, NMPruning(n, spec.m).compute_mask(s, torch.ones_like(s)) if n > 0 else torch.ones_like(s))
    elif g is Granularity.block:
        scores = [given.get(id(t.module)) for t in targets.tensors]
        scores = [s if s is not None else block_scores(imp(t), spec.block_shape, norm)
                  for t, s in zip(targets.tensors, scores)]
        keeps = keep_units(scores, amount, spec.scope, at_least_one=False)
        for t, keep in zip(targets.tensors, keeps):
            put(t, expand_blocks(keep, spec.block_shape, t.weight().shape))
    elif g is Granularity.neuron:
        pair_scores = [given.get(id(p.ffn_in.module)) for p in targets.ffn]
        pair_scores = [s if s is not None else group_norm(torch.cat([imp(t) for t in p.inputs], dim=1), norm, dim=1)
                       for p, s in zip(targets.ffn, pair_scores)]
        lone_scores = [given.get(id(t.module)) for t in targets.tensors]
        lone_scores = [s if s is not None else group_norm(imp(t), norm, dim=1)
                       for t, s in zip(targets.tensors, lone_scores)]
        keeps = keep_units(pair_scores + lone_scores, amount, spec.scope, at_least_one=True)
        for p, keep in zip(targets.ffn, keeps[:len(targets.ffn)]):
            rows = keep.to(torch.float32)
            for t in p.inputs:
                put_rows(t, rows)
            put(p.ffn_out, rows[None, :].expand_as(p.ffn_out.weight()).clone())
        for t, keep in zip(targets.tensors, keeps[len(targets.ffn):]):
            put_rows(t, keep.to(torch.float32))
    elif g is Granularity.head:
        scores = [given.get(id(h.self_attention)) for h in targets.heads]
        scores = [s if s is not None else head_unit_scores(h, imp, norm) for h, s in zip(targets.heads, scores)]
        for h, keep in zip(targets.heads, keep_heads(targets.heads, scores, amount, spec.scope)):
            rows = keep.repeat_interleave(h.head_dim).to(torch.float32)
            if h.packed:  # one mask over the packed rows q | k | v
                put_rows(h.q, torch.cat([rows, rows, rows]),
                         "in_proj_bias" if h.q.param == "in_proj_weight" else "bias")
            for t in (() if h.packed else (h.q,) if h.gqa else (h.q, h.k, h.v)):
                put_rows(t, rows)
            put(h.o, rows[None, :].expand_as(h.o.weight()).clone())
    return out


def keep_heads(heads: list[Heads], scores: list[torch.Tensor], amount: float, scope: Scope) -> list[torch.Tensor]:
    """Keep-vectors of heads. Grouped-query blocks drop round(amount * group) query heads in every K/V group
    (whatever the scope), so each group keeps as many heads as the others and removal stays possible."""
    plain = [i for i, h in enumerate(heads) if not h.gqa]
    out: list = [None] * len(heads)
    for i, keep in zip(plain, keep_units([scores[i] for i in plain], amount, scope, at_least_one=True)):
        out[i] = keep
    for i, h in enumerate(heads):
        if h.gqa:
            groups = scores[i].reshape(h.num_kv_heads, -1)
            out[i] = torch.cat([lowest_removed(g, amount) for g in groups])
            if not out[i].any():
                out[i][int(torch.argmax(scores[i]))] = True
    return out


def keep_units(scores: list[torch.Tensor], amount: float, scope: Scope, at_least_one: bool) -> list[torch.Tensor]:
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


def install_masks(masks: Masks) -> None:
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
