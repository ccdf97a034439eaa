"""The stage plan a handler executes: the core's (`ctx.plan`), or the core planner's when called directly."""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from unicompress.backend.adapter import StageContext
from unicompress.backend.plan import StagePlan


def stage_plan(model: nn.Module, spec: Any, ctx: Optional[StageContext]) -> StagePlan:
    """`ctx.plan` when the core made one, else `unicompress.planner.plan_stage` on this model (stored on `ctx`).

    Handlers never choose layers themselves: a direct call (``apply_quantization(model, spec, None, ctx)``)
    gets the same plan as `compress()` would.
    """
    if ctx is not None and ctx.plan is not None:
        return ctx.plan
    from unicompress.planner import plan_stage

    from .backend import TorchAdapter

    plan = plan_stage(TorchAdapter(), model, spec, ctx.stage_index if ctx is not None else 0)
    if ctx is not None:
        ctx.plan = plan
    return plan
