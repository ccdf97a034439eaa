"""What a torch quantization stage plans and records: per-layer integer grids (`LayerQuant`), the record a
quantized model carries (`QuantRecord` under `RECORD_ATTR`), and the plan from the core's override rule."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unicompress.backend.plan import StagePlan
from unicompress.planner import layer_settings
from unicompress.specs import QuantGranularity, QuantizationSpec, Scheme

from . import layers as _layers

#: attribute under which a quantized model keeps what was done to it (plain data, survives deepcopy)
RECORD_ATTR = "_unicompress_quant"


@dataclass(frozen=True)
class LayerQuant:
    """The integer grid of one layer's weights."""

    bits: int
    symmetric: bool
    per_channel: bool
    narrow_range: bool = True

    @property
    def torch_range(self) -> tuple[int, int]:
        """(qmin, qmax) as torch stores them: signed containers, asymmetric shifted down by 2^(b-1)."""
        top = 2 ** (self.bits - 1) - 1
        if self.symmetric:
            return (-top if self.narrow_range else -top - 1), top
        return -top - 1, top

    @property
    def offset(self) -> int:
        """What to add to torch's integers (and zero-points) to get the reference's."""
        return 0 if self.symmetric else 2 ** (self.bits - 1)


@dataclass
class QuantRecord:
    """What `apply_quantization` did: the mode, the per-layer grids, activation settings."""

    mode: str
    mapping: str
    layers: dict[str, LayerQuant]
    activation_bits: int = 8
    activation_symmetric: bool = False
    log_base: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)


def plan_layers(model: nn.Module, spec: QuantizationSpec, stage: StagePlan) -> dict[str, LayerQuant]:
    """The planned layers (`stage.selected`: the selector's layers minus `skip` overrides) -> their grid,
    under the core's override rule (`unicompress.planner.layer_settings`: later overrides win field by field).

    Raises before any work when a planned layer is a packed Q/K/V of nn.MultiheadAttention, which no torch
    quantization path can store (its forward reads ``in_proj_weight`` as a tensor)."""
    records = _layers.by_name(model)
    packed = [n for n in stage.selected if n in records and records[n].kind == "packed_qkv"]
    if packed:
        raise NotImplementedError(f"torch cannot quantize the packed Q/K/V of nn.MultiheadAttention ({packed[:3]}) "
                                  "nor its out_proj; exclude them, e.g. quantization.selector.exclude: "
                                  "['*.self_attn.in_proj', '*.self_attn.out_proj']")
    plan: dict[str, LayerQuant] = {}
    for name in stage.selected:
        s = layer_settings(spec, name)
        if not s["skip"]:
            plan[name] = LayerQuant(s["bits"], s["scheme"] is Scheme.symmetric,
                                    s["granularity"] is QuantGranularity.per_channel, spec.narrow_range)
    if not plan:
        raise ValueError("quantization.selector (with overrides) selects no Linear layer of this model")
    return plan


def activation_range(spec: QuantizationSpec) -> tuple[int, int, torch.dtype]:
    """(qmin, qmax, dtype) of the activations: symmetric int8 (narrow or full), asymmetric uint8."""
    b = spec.activation_bits
    if spec.activation_scheme is Scheme.symmetric:
        top = 2 ** (b - 1) - 1
        return (-top if spec.narrow_range else -top - 1), top, torch.int8
    return 0, 2 ** b - 1, torch.uint8


def is_quantized(model: Any) -> bool:
    """True when `model` came out of `apply_quantization`."""
    return isinstance(model, nn.Module) and getattr(model, RECORD_ATTR, None) is not None


def quant_record(model: nn.Module) -> QuantRecord:
    """The `QuantRecord` of a quantized model; raises ValueError for a float one."""
    rec = getattr(model, RECORD_ATTR, None)
    if rec is None:
        raise ValueError("this model is not quantized (no unicompress quantization record)")
    return rec
