"""Masks that follow a schedule during training, ranked by the spec's criterion (`GradualPruner`).

Criteria: magnitude; movement (scores accumulate -w * grad during fine-tuning, Sanh et al. 2020);
l1_regularized (L1 / group-L1 penalty during training, then magnitude); l0_regularized (hard-concrete gates,
`pruning_l0`; units ranked by their gate's log-alpha at the end). The schedule's values are the core's
(`unicompress.reference.pruning.polynomial_sparsity`), the same on every backend.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from unicompress.backend.adapter import StageContext
from unicompress.reference.pruning import mask_update_due, polynomial_sparsity
from unicompress.specs import Criterion, Granularity, PruningSpec, ScheduleKind

from . import removal
from .planning import stage_plan
from .pruning_l0 import HardConcreteGate, L0Gates
from .pruning_masks import achieved_sparsity, compute_masks, install_masks, make_permanent
from .pruning_targets import WeightRef, magnitude, resolve_targets
from .training import cross_entropy_loss


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
    the L0 gates' log-alpha (l0_regularized, gates added to the model as parametrizations, their noise
    drawn from generators seeded by ``spec.training.seed``).
    """

    def __init__(self, model: nn.Module, spec: PruningSpec, ctx: Optional[StageContext] = None):
        self.model, self.spec, self.ctx = model, spec, ctx or StageContext()
        self.targets = resolve_targets(model, spec, stage_plan(model, spec, self.ctx))
        self.criterion = spec.criterion
        self.movement: dict[tuple[int, str], torch.Tensor] = {}
        self.current = 0.0
        self.l0: Optional[L0Gates] = None
        if self.criterion is Criterion.l0_regularized:
            seed = spec.training.seed if spec.training is not None else 0
            self.l0 = L0Gates(self.targets, spec, seed)

    @property
    def gates(self) -> dict[int, HardConcreteGate]:
        """The L0 gates (empty unless l0_regularized)."""
        return self.l0.gates if self.l0 is not None else {}

    # -- schedule
    def sparsity_at(self, step: int) -> float:
        """Target sparsity of the masks at `step` (one-shot schedules prune at the last step only)."""
        sch = self.spec.schedule
        if sch.kind is not ScheduleKind.polynomial or step < sch.begin_step:
            return 0.0
        return polynomial_sparsity(step, self.spec.target_sparsity, sch.initial_sparsity, sch.begin_step,
                                   sch.end_step, sch.power)

    def due(self, step: int) -> bool:
        """Whether the masks are updated at `step` (the reference's rule, `mask_update_due`)."""
        sch = self.spec.schedule
        return sch.kind is ScheduleKind.polynomial and mask_update_due(step, sch.begin_step, sch.end_step,
                                                                        sch.frequency)

    def step(self, step: int) -> Optional[float]:
        """Update the masks if the schedule says so; returns the achieved sparsity when it did."""
        if self.l0 is not None:
            self.l0.resample()
        if not self.due(step):
            return None
        return self.update(step, self.sparsity_at(step))

    def update(self, step: int, amount: float) -> float:
        """Set every mask to sparsity `amount` now (ranked by the criterion) and log the achieved sparsity."""
        masks = compute_masks(self.targets, self.spec, amount, self.importance, self._unit_scores())
        if self.l0 is not None:
            self.l0.apply_masks(masks)
            self.current = self.l0.sparsity(masks)
        else:
            install_masks(masks)
            self.current = achieved_sparsity(self.targets)
        self.ctx.log("sparsity", step, self.current)
        return self.current

    # -- criteria
    def importance(self, t: WeightRef) -> torch.Tensor:
        """Per-weight importance of `t` under the spec's criterion (>= 0, neutral [out, in] layout)."""
        gated = self.l0.importance(t) if self.l0 is not None else None
        if gated is not None:
            return gated
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
        if self.l0 is not None:
            return self.l0.penalty()
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
            return self.spec.regularization * sum(terms)  # a sum over layers: keeps its strength on deep models
        return torch.zeros(())

    def loss_fn(self, base: Callable = cross_entropy_loss) -> Callable:
        """The task loss plus this criterion's penalty."""
        def loss(model: nn.Module, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
            return base(model, inputs, labels) + self.penalty()
        return loss

    def extra_params(self) -> list[torch.Tensor]:
        """Parameters the training loop must train besides the model's (the L0 gates' log-alpha)."""
        return self.l0.params() if self.l0 is not None else []

    def _unit_scores(self) -> Optional[dict]:
        return self.l0.unit_scores() if self.l0 is not None and self.l0.gates else None

    # -- end
    def finish(self, model: Optional[nn.Module] = None) -> nn.Module:
        """Masks at the target sparsity, made permanent; heads/neurons removed if the spec says so."""
        model = model or self.model
        final_masks = compute_masks(self.targets, self.spec, self.spec.target_sparsity, self.importance,
                                    self._unit_scores())
        if self.l0 is not None:
            self.l0.remove(self.model)  # masks are keyed by (module, param): still valid afterwards
        install_masks(final_masks)
        make_permanent(model)
        self.current = achieved_sparsity(self.targets)
        if self.spec.remove_pruned and self.spec.granularity in (Granularity.neuron, Granularity.head):
            removal.remove_units(model, self.targets.ffn, self.targets.heads)
        return model
