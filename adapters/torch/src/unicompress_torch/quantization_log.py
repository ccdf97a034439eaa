"""Logarithmic quantization (``mapping: log``), emulated: no torch toolkit has it. A parametrization stores
codes, signs and scales; QAT trains through it with a straight-through estimator."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import QuantizationSpec, QuantMode

from .quantization_records import RECORD_ATTR, LayerQuant, QuantRecord, quant_record
from .training import train_loop


class LogQuantWeight(nn.Module):
    """Parametrization that replaces a weight by its logarithmic quantization.

    ``|w| ~= scale * base^-q`` with ``q in [0, 2^(b-1)-1]``, scale = per-row (or tensor) max |w|, signs
    kept apart, values more than half a log step below the smallest level become 0 (the reference's
    semantics). While `frozen` is False (QAT) codes follow the float weight with a straight-through
    gradient; `freeze()` stores codes, signs and scales as buffers.
    """

    def __init__(self, weight: torch.Tensor, bits: int, base: float, per_channel: bool, frozen: bool = True):
        super().__init__()
        self.bits, self.base, self.per_channel = int(bits), float(base), bool(per_channel)
        self.frozen = False
        q, sign, scale = self.codes(weight)
        self.register_buffer("q", q)
        self.register_buffer("sign", sign)
        self.register_buffer("scale", scale)
        self.frozen = frozen

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = w.detach().double()
        if self.per_channel:
            scale = x.abs().amax(dim=1, keepdim=True)
        else:
            scale = x.abs().amax().reshape(1, 1)
        scale = scale.clamp_min(float(np.finfo(np.float32).eps))
        qmax = 2 ** (self.bits - 1) - 1
        k = -torch.log(x.abs() / scale) / math.log(self.base)
        underflow = ~torch.isfinite(k) | (k > qmax + 0.5)
        q = torch.where(underflow, torch.full_like(k, qmax), torch.round(k)).clamp(0, qmax)
        sign = torch.where(underflow, torch.zeros_like(x), torch.sign(x))
        return q.to(torch.int8), sign.to(torch.int8), scale.reshape(-1)

    def dequantized(self, q: torch.Tensor, sign: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        s = scale.reshape(-1, 1)
        return (sign.double() * s * torch.pow(torch.tensor(self.base, dtype=torch.float64), -q.double()))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            return self.dequantized(self.q, self.sign, self.scale).to(w.dtype)
        deq = self.dequantized(*self.codes(w)).to(w.dtype)
        return w + (deq - w).detach()  # straight-through estimator

    def freeze(self, w: torch.Tensor) -> None:
        q, sign, scale = self.codes(w)
        self.q.copy_(q)
        self.sign.copy_(sign)
        self.scale.copy_(scale)
        self.frozen = True


def apply_log(model: nn.Module, spec: QuantizationSpec, plan: dict[str, LayerQuant], data: Optional[TaskData],
               ctx: StageContext) -> nn.Module:
    """Register a `LogQuantWeight` on each planned Linear; QAT trains through it, then freezes the codes."""
    qat = spec.mode is QuantMode.qat
    for name, lq in plan.items():
        module = model.get_submodule(name)
        param = LogQuantWeight(module.weight, lq.bits, spec.log_base, lq.per_channel, frozen=not qat)
        parametrize.register_parametrization(module, "weight", param)
    if qat:
        train_loop(model, data, spec.training, ctx, keep_zeros=False)
        for name in plan:
            module = model.get_submodule(name)
            module.parametrizations.weight[0].freeze(module.parametrizations.weight.original)
    model.eval()
    setattr(model, RECORD_ATTR, QuantRecord(spec.mode.value, "log", plan, log_base=spec.log_base))
    return model


def log_raw(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{layer: (codes, signs, scales)} of the log-quantized layers."""
    out = {}
    for name in quant_record(model).layers:
        p = model.get_submodule(name).parametrizations.weight[0]
        scale = p.scale.numpy().astype(np.float64)
        out[name] = (p.q.numpy().astype(np.int64), p.sign.numpy().astype(np.int8),
                     scale if p.per_channel else scale.reshape(()))
    return out

