"""Pruning with torch.nn.utils.prune: masks from torch's pruning methods, made permanent with prune.remove.

Granularities (the unit that is pruned) and how torch does them:
  - unstructured: `prune.l1_unstructured` per layer, `prune.global_unstructured` across layers
  - n_m: `NMPruning`, a `prune.BasePruningMethod` subclass (torch's extension point) that zeroes the N
    smallest |w| of every M consecutive weights along the input dim
  - neuron: `prune.ln_structured` (n=1 or 2, dim=0) on the FFN-in rows, with the matching FFN-out columns
    (and FFN-in bias) masked by `prune.custom_from_mask`; a selected Linear outside an FFN pair loses rows
  - head: head scores (norm of the head's Q/K/V rows and O columns), masks by `prune.custom_from_mask`
  - block: `BlockPruning`, a `prune.BasePruningMethod` subclass over tiles of the [out, in] weight
What is pruned is the core's plan (`ctx.plan`, `unicompress.planner`): the selected tensors, the planned
attention blocks and FFN pairs, and the lone Linears (`plan.rows`); nothing is chosen here. Grouped-query
attention (`num_kv_heads` < heads) prunes query heads and their output columns, the same number in every
K/V group. Gated FFNs prune the neuron's row of the gate as well. With ``remove_pruned`` (head/neuron) the
pruned units are physically removed (`removal`).

This module is the stage handler; the pieces live in modules with one job each:
  - `pruning_methods`: the N:M and block `BasePruningMethod`s and their tile maths
  - `pruning_targets`: the plan resolved to torch modules (`WeightRef`, `FFNPair`, `Heads`, `Targets`)
  - `pruning_masks`: unit scores, keep-vectors, installing masks and making them permanent
  - `pruning_gradual`: `GradualPruner` (schedules, movement, L1), usable in your own loop
  - `pruning_l0`: L0 hard-concrete gates, seeded from ``spec.training.seed``
The names below stay importable from here.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.utils import prune

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import Criterion, Granularity, Norm, PruningSpec, ScheduleKind, Scope

from . import removal
from .planning import stage_plan
from .pruning_gradual import GradualPruner
from .pruning_l0 import HardConcreteGate, L0Gates
from .pruning_masks import achieved_sparsity, compute_masks, head_unit_scores, install_masks, make_permanent
from .pruning_methods import BlockPruning, NMPruning, block_scores, expand_blocks, group_norm, lowest_removed
from .pruning_targets import FFNPair, Heads, Importance, Targets, WeightRef, magnitude, resolve_targets
from .training import global_rng_kept, train_loop


def apply_pruning(model: nn.Module, spec: PruningSpec, data: Optional[TaskData], ctx: StageContext) -> nn.Module:
    """PruningSpec handler: one-shot magnitude right away; schedules and training-time criteria train
    with `train_loop` while a `GradualPruner` updates the masks; masks are made permanent at the end.

    The process-global torch RNG is left as it was (the training loop seeds it from ``training.seed``).
    """
    if not spec.trains:
        targets = resolve_targets(model, spec, stage_plan(model, spec, ctx))
        prune_one_shot(model, spec, targets)
        make_permanent(model)
        ctx.log("sparsity", 0, achieved_sparsity(targets))
        if spec.remove_pruned and spec.granularity in (Granularity.neuron, Granularity.head):
            remove_pruned_units(model, targets)
        return model
    with global_rng_kept():
        pruner = GradualPruner(model, spec, ctx)
        regularized = spec.criterion in (Criterion.l1_regularized, Criterion.l0_regularized)
        train_loop(model, data, spec.training, ctx, loss_fn=pruner.loss_fn() if regularized else None,
                   on_step=pruner.step, extra_params=pruner.extra_params(), after_backward=pruner.after_backward)
        pruner.finish(model)
    steps = spec.training.steps
    if spec.schedule.kind is ScheduleKind.one_shot or not ctx.history.get("sparsity") \
            or ctx.history["sparsity"][-1][0] != steps:
        ctx.log("sparsity", steps, pruner.current)
    return model


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
        p_norm = 1 if spec.norm is Norm.l1 else 2
        for p in targets.ffn:
            prune.ln_structured(p.ffn_in.module, p.ffn_in.param, amount=spec.target_sparsity, n=p_norm, dim=0)
            rows = p.ffn_in.module.weight_mask[:, 0].clone()
            if getattr(p.ffn_in.module, "bias", None) is not None:
                prune.custom_from_mask(p.ffn_in.module, "bias", rows)
            prune.custom_from_mask(p.ffn_out.module, p.ffn_out.param,
                                   rows[None, :].expand_as(p.ffn_out.weight()).clone())
        for t in targets.tensors:
            prune.ln_structured(t.module, t.param, amount=spec.target_sparsity, n=p_norm, dim=0)
            if getattr(t.module, "bias", None) is not None:
                prune.custom_from_mask(t.module, "bias", t.module.weight_mask[:, 0].clone())
    else:  # global structured, heads, or tensors already under a mask
        install_masks(compute_masks(targets, spec, spec.target_sparsity, magnitude))


def _has_hooks(targets: Targets) -> bool:
    """True when torch's own entry points cannot be used as they are: masks already on, a transposed
    (Conv1D) weight whose input dim is not the last one, or a gated FFN (rows of two layers at once)."""
    return any(hasattr(t.module, t.param + "_mask") or t.transposed for t in targets.all_tensors()) \
        or any(p.gate is not None for p in targets.ffn)


def remove_pruned_units(model: nn.Module, targets: Targets) -> None:
    """Physically drop the zeroed FFN neurons and attention heads of `targets` (after `make_permanent`)."""
    removal.remove_units(model, targets.ffn, targets.heads)


__all__ = ["apply_pruning", "prune_one_shot", "remove_pruned_units", "GradualPruner", "HardConcreteGate", "L0Gates",
           "NMPruning", "BlockPruning", "WeightRef", "FFNPair", "Heads", "Targets", "Importance", "resolve_targets",
           "magnitude", "compute_masks", "head_unit_scores", "install_masks", "make_permanent", "achieved_sparsity",
           "block_scores", "expand_blocks", "group_norm", "lowest_removed"]
