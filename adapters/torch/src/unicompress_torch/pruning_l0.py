"""L0 regularisation (Louizos et al. 2018): hard-concrete gates as `torch.nn.utils.parametrize`
parametrizations of the pruned weights, one gate per unit.

Every gate draws its noise from its own `torch.Generator`, seeded from the stage's seed
(``spec.training.seed``) and the gate's position in the plan, never from the process-global RNG: the same
seed gives the same gates and masks whatever else the process draws, and the global RNG state is left as it
was (other threads and later stages see no difference).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from unicompress.specs import Granularity, PruningSpec

from .pruning_methods import expand_blocks
from .pruning_targets import Targets, WeightRef


def gate_seed(seed: int, index: int) -> int:
    """The seed of gate `index` of a stage seeded `seed`: distinct streams per gate, no overlap across seeds."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


class HardConcreteGate(nn.Module):
    """L0 gates as a `torch.nn.utils.parametrize` parametrization of a weight.

    One gate per unit; `expand` maps the gate vector to the weight's shape. In training each step
    draws z = clamp(sigmoid((log u - log(1-u) + log_alpha) / beta) * (zeta - gamma) + gamma, 0, 1), u from
    this gate's own generator (seeded `seed`); in eval z is the deterministic gate. `mask` (1 = kept) lets a
    schedule switch units off. `target` is the weight it gates.
    """

    beta, gamma, zeta = 2.0 / 3.0, -0.1, 1.1

    def __init__(self, units: tuple[int, ...], expand: Callable[[torch.Tensor], torch.Tensor], seed: int = 0,
                 target: Optional[WeightRef] = None):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full(units, 3.0))  # starts near 1 (gate open)
        self.register_buffer("mask", torch.ones(units))
        self.expand = expand
        self.target = target
        # a CPU generator: the same draws whatever device the model is on
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self._z: Optional[torch.Tensor] = None

    def resample(self) -> None:
        """Draw new noise at the next use (once per optimizer step)."""
        self._z = None

    def gate(self) -> torch.Tensor:
        """The gate values (training: a sample; eval: the deterministic gate), times `mask`."""
        if self.training:
            if self._z is None:
                u = torch.rand(self.log_alpha.shape, generator=self.generator, dtype=self.log_alpha.dtype)
                u = u.to(self.log_alpha.device).clamp(1e-6, 1 - 1e-6)
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


class L0Gates:
    """The gates of one l0_regularized stage, keyed like the unit scores of `pruning_masks.compute_masks`
    (id of the gated module; for FFN pairs the ffn_in module, for heads the query projection)."""

    def __init__(self, targets: Targets, spec: PruningSpec, seed: int = 0):
        self.targets, self.spec, self.seed = targets, spec, seed
        self.gates: dict[int, HardConcreteGate] = {}
        g = spec.granularity
        if g in (Granularity.unstructured, Granularity.n_m):
            for t in targets.tensors:
                self._gate(t, t.weight().shape, lambda z: z)
        elif g is Granularity.block:
            bs = spec.block_shape
            for t in targets.tensors:
                shape = t.weight().shape
                n_blocks = tuple(-(-s // b) for s, b in zip(shape, bs))
                self._gate(t, n_blocks, lambda z, shape=shape: expand_blocks(z, bs, shape))
        elif g is Granularity.neuron:
            for p in targets.ffn:  # gate the neuron's output: the columns of ffn_out
                self._gate(p.ffn_out, (p.ffn_out.weight().shape[1],), lambda z: z[None, :], key=p.ffn_in.module)
            for t in targets.tensors:
                self._gate(t, (t.weight().shape[0],), lambda z: z[:, None])
        elif g is Granularity.head:
            for h in targets.heads:  # gate each head's output: its columns of O
                d = h.head_dim
                self._gate(h.o, (h.num_heads,), lambda z, d=d: z.repeat_interleave(d)[None, :],
                           key=h.self_attention)

    def _gate(self, t: WeightRef, units, expand, key: Optional[nn.Module] = None) -> None:
        if t.transposed:  # gates expand to the neutral [out, in] shape; the parameter is [in, out]
            expand = (lambda z, inner=expand: inner(z).t())
        gate = HardConcreteGate(tuple(units), expand, gate_seed(self.seed, len(self.gates)), target=t)
        parametrize.register_parametrization(t.module, t.param, gate)
        self.gates[id(key if key is not None else t.module)] = gate

    def resample(self) -> None:
        """New noise for every gate (call at each optimizer step)."""
        for g in self.gates.values():
            g.resample()

    def params(self) -> list[torch.Tensor]:
        """The gates' log-alpha parameters (trained with the model)."""
        return [g.log_alpha for g in self.gates.values()]

    def penalty(self) -> torch.Tensor:
        """Mean expected open-gate count, times the spec's regularization."""
        total = sum(g.penalty() for g in self.gates.values())
        count = sum(g.log_alpha.numel() for g in self.gates.values())
        return self.spec.regularization * total / max(count, 1)

    def importance(self, t: WeightRef) -> Optional[torch.Tensor]:
        """Per-weight importance from the gate of `t` (unstructured / n_m), else None."""
        gate = self.gates.get(id(t.module))
        if gate is None or self.spec.granularity not in (Granularity.unstructured, Granularity.n_m):
            return None
        la = gate.log_alpha.detach()
        # rank weights by their gate (>= 0 for torch's L1 methods); switched-off gates rank lowest
        return (la - la.min() + 1e-6) * gate.mask

    def unit_scores(self) -> dict:
        """Scores per gated unit group for `compute_masks`."""
        # units a schedule switched off already score 0, so later (tighter) masks keep them off
        return {k: (g.log_alpha.detach().double() - g.log_alpha.detach().min().double() + 1e-6) * g.mask.double()
                for k, g in self.gates.items()}

    def apply_masks(self, masks: dict) -> None:
        """With L0 gates on, a schedule switches gates off rather than adding prune hooks."""
        g = self.spec.granularity
        ffn_out = [p.ffn_out for p in self.targets.ffn]
        for gate in self.gates.values():
            t = gate.target
            _, mask = masks[(id(t.module), t.param)]
            if g in (Granularity.unstructured, Granularity.n_m):
                unit = mask
            elif g is Granularity.block:
                br, bc = self.spec.block_shape
                unit = mask[::br, ::bc]
            elif g is Granularity.neuron:
                unit = mask[0] if t in ffn_out else mask[:, 0]
            else:  # head: the O columns of each head
                unit = mask[0].reshape(gate.log_alpha.shape[0], -1)[:, 0]
            gate.mask.copy_(unit.reshape(gate.mask.shape))

    @staticmethod
    def sparsity(masks: dict) -> float:
        """Fraction of zeros over the masked weights (biases left out)."""
        zeros = total = 0
        for t, mask in masks.values():
            if t.param == "bias":
                continue
            zeros += int((mask == 0).sum())
            total += mask.numel()
        return zeros / total if total else 0.0

    def remove(self, model: nn.Module) -> None:
        """Fold the deterministic gates into the weights (eval mode) and drop the parametrizations."""
        model.eval()
        for gate in self.gates.values():
            t = gate.target
            if parametrize.is_parametrized(t.module, t.param):
                parametrize.remove_parametrizations(t.module, t.param, leave_parametrized=True)
