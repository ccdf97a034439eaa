"""Low-rank factorisation: a Linear becomes Linear(in, r) then Linear(r, out) from its truncated SVD.

The replacement is a `layers.LowRankLinear` (an nn.Sequential) under the original module name, so
``bert.encoder.layer.0.intermediate.dense`` becomes ``...dense.0`` ([r, in], no bias) and ``...dense.1``
([out, r], the original bias). Singular values are split evenly (sqrt(s) on each factor).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import LowRankSpec

from . import layers as L
from .planning import stage_plan


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest r whose top-r singular values hold at least `energy` of sum(s^2)."""
    s2 = singular_values.double() ** 2
    cum = torch.cumsum(s2, 0) / s2.sum()
    return int(min(int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=torch.float64))) + 1, len(s2)))


def factorize_linear(layer: nn.Linear, rank: int) -> L.LowRankLinear:
    """The two-Linear replacement of `layer` at `rank` (torch.linalg.svd in float64)."""
    w = layer.weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = torch.sqrt(s[:rank])
    first = nn.Linear(w.shape[1], rank, bias=False)
    second = nn.Linear(rank, w.shape[0], bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:rank]).to(layer.weight.dtype))
        second.weight.copy_((u[:, :rank] * root[None, :]).to(layer.weight.dtype))
        if layer.bias is not None:
            second.bias.copy_(layer.bias.detach())
    return L.LowRankLinear(first, second).to(layer.weight.device)


def apply_low_rank(model: nn.Module, spec: LowRankSpec, data: Optional[TaskData], ctx: StageContext) -> nn.Module:
    """LowRankSpec handler: factorise every selected Linear (already-factorised parts are left alone).

    Layers where r * (in + out) >= in * out are skipped unless `spec.force`; the chosen rank of each
    layer is logged as ``ctx.log("rank/<name>", 0, r)``.
    """
    low_rank = {n for n, m in model.named_modules() if isinstance(m, L.LowRankLinear)}
    planned = list(stage_plan(model, spec, ctx).selected)
    if not planned:
        raise ValueError(f"low_rank selector {spec.selector.model_dump()} chose no nn.Linear layer")
    # factors of an earlier low-rank stage are left alone (a second pass is a no-op for them)
    planned = [n for n in planned if n.rsplit(".", 1)[0] not in low_rank]
    L.conv1d_to_linear(model, planned)  # a transformers Conv1D is factorised as the Linear it equals
    records = L.by_name(model)
    chosen = [records[n] for n in planned if n in records and type(records[n].module) is nn.Linear]
    for rec in chosen:
        w = rec.module.weight.detach()
        out_f, in_f = w.shape
        if spec.rank is not None:
            rank = min(spec.rank, min(out_f, in_f))
        else:
            rank = rank_for_energy(torch.linalg.svdvals(w.double()), spec.energy)
        if rank * (in_f + out_f) >= in_f * out_f and not spec.force:
            continue
        L.replace_module(model, rec.name, factorize_linear(rec.module, rank))
        ctx.log(f"rank/{rec.name}", 0, rank)
    return model
