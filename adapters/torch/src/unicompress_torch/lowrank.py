"""Low-rank factorisation: a Linear becomes Linear(in, r) then Linear(r, out) from its truncated SVD.

The core plans it (`ctx.plan.selected`, `ctx.plan.ranks`: which layers, at which rank, only those where it
saves parameters unless `force`); this module only carries it out. The replacement is a
`layers.LowRankLinear` (an nn.Sequential) under the original module name, so
``bert.encoder.layer.0.intermediate.dense`` becomes ``...dense.0`` ([r, in], no bias) and ``...dense.1``
([out, r], the original bias). Singular values are split evenly (sqrt(s) on each factor), as the reference does.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.errors import LayerSelectionError
from unicompress.specs import LowRankSpec

from . import layers as L
from .discovery import is_conv1d
from .planning import stage_plan


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


#: modules whose forward reads their child Linears' ``.weight`` directly (the fused fast path), or hold the
#: projection as a bare parameter: a child swapped for two Linears breaks them
_READS_WEIGHTS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def unreplaceable(model: nn.Module, names) -> list[str]:
    """The named layers that two Linears cannot stand in for (the packed ``in_proj``, children of `_READS_WEIGHTS`)."""
    modules = dict(model.named_modules())
    out = []
    for name in names:
        module = modules.get(name)
        parent = modules.get(name.rpartition(".")[0]) if "." in name else model
        if not (type(module) is nn.Linear or (module is not None and is_conv1d(module))) or \
                isinstance(parent, _READS_WEIGHTS):
            out.append(name)
    return out


def apply_low_rank(model: nn.Module, spec: LowRankSpec, data: Optional[TaskData], ctx: StageContext) -> nn.Module:
    """LowRankSpec handler: factorise every planned layer at its planned rank, logged as ``rank/<name>``."""
    plan = stage_plan(model, spec, ctx)
    blocked = unreplaceable(model, plan.selected)
    if blocked:
        raise LayerSelectionError(
            f"stages[{plan.index}]: torch cannot factorise {len(blocked)} planned layer(s) whose owner reads the "
            f"weight tensor itself (nn.MultiheadAttention, nn.Transformer*Layer) or that are no plain nn.Linear / "
            f"Conv1D: {', '.join(blocked[:8])}{' ...' if len(blocked) > 8 else ''}; exclude them with "
            "selector.exclude (or select other roles)")
    L.conv1d_to_linear(model, list(plan.selected))  # a transformers Conv1D is factorised as the Linear it equals
    for name in plan.selected:
        L.replace_module(model, name, factorize_linear(model.get_submodule(name), plan.ranks[name]))
        ctx.log(f"rank/{name}", 0, plan.ranks[name])
    return model
