"""QuantizationSpec handler of the torch adapter: each mode is done by the native toolkit.

- ``dynamic``: `torch.ao.quantization.quantize_dynamic` with per-layer qconfigs (fbgemm int8 kernels).
  Weight observers carry the spec's ``quant_min/quant_max`` so bits, scheme and narrow range match the spec;
  activations use the full 8-bit range (`FullRangeDynamicLinear`), and nn.TransformerEncoderLayer is kept
  off its fast path, which cannot handle quantized Linears.
- ``static``: torchao PT2E (`torch.export` -> `prepare_pt2e` with `X86InductorQuantizer` -> calibration
  -> `convert_pt2e`). Activation observers: min-max (`MinMaxObserver`), percentile (a `MinMaxObserver`
  subclass: the observer extension point), MSE (`HistogramObserver`, which minimises the L2 quantization
  error). Weights are clipped by the same method (a `PerChannelMinMaxObserver` subclass computing the
  reference's percentile / MSE-grid clip), or min-max.
  The module-name filter of the quantizer keeps unselected layers (pooler, head, skipped) in float.
- ``qat``: torchao `prepare_qat_pt2e` (fake-quant), training with the shared train loop, `convert_pt2e`.
- ``weight_only``: torchao `IntxUnpackedToInt8Tensor` weights (int2..int8), qparams from torchao's
  `choose_qparams_affine` with the spec's integer range.
- ``mapping: log``: emulated (no toolkit has it): a parametrization that stores codes, signs and scales.

Per-layer overrides become per-module qconfigs (dynamic, PT2E `set_module_name_qconfig`) or per-module
settings (weight-only, log). Integer ranges follow the reference (`unicompress.reference.quantization`):
symmetric narrow ``[-(2^(b-1)-1), 2^(b-1)-1]``; asymmetric weights are stored by torch as signed
``[-2^(b-1), 2^(b-1)-1]`` and reported shifted by ``2^(b-1)`` (the same real values) so that
`quantized_weights` speaks the reference convention ``[0, 2^b-1]``.

ONNX: `export_onnx` exports the float twin of the quantized model (weights = the dequantized integers the
toolkit produced) with the TorchScript exporter, then rewrites each quantized Linear as QDQ (static/QAT:
QuantizeLinear/DequantizeLinear on the activation with the calibrated torch qparams, int8 weight +
DequantizeLinear), MatMulInteger with DynamicQuantizeLinear (dynamic), or weight DequantizeLinear
(weight-only). The integers and scales in the file are exactly the ones torch computed.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from torch.nn.utils import parametrize

from unicompress.backend.adapter import StageContext
from unicompress.backend.plan import StagePlan
from unicompress.backend.types import Inputs, LayerStats, QuantizedTensor, TaskData, count_nonzero
from unicompress.fileio import atomic_path
from unicompress.specs import (CalibrationMethod, Mapping, QuantGranularity, QuantizationSpec, QuantMode,
                               Scheme)

from unicompress.planner import layer_settings

from . import layers as _layers
from .planning import stage_plan
from .training import call_model, logits_of, to_torch_inputs, train_loop

#: attribute under which a quantized model keeps what was done to it (plain data, survives deepcopy)
RECORD_ATTR = "_unicompress_quant"


# ---- the plan: which layer gets which integer grid ---------------------------------------------------
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


def _activation_range(spec: QuantizationSpec) -> tuple[int, int, torch.dtype]:
    b = spec.activation_bits
    if spec.activation_scheme is Scheme.symmetric:
        top = 2 ** (b - 1) - 1
        return (-top if spec.narrow_range else -top - 1), top, torch.int8
    return 0, 2 ** b - 1, torch.uint8


# ---- public entry points ----------------------------------------------------------------------------
def apply_quantization(model: nn.Module, spec: QuantizationSpec, data: Optional[TaskData],
                       ctx: StageContext) -> nn.Module:
    """QuantizationSpec handler: quantize `model` (a copy the core made) with the native toolkit.

    Returns the quantized model: the same module with quantized submodules (dynamic, weight-only, log)
    or a `PT2EQuantizedModel` around the converted graph (static, qat).

    Example: ``apply_quantization(bert, QuantizationSpec(mode="dynamic"), None, StageContext())``.
    """
    if spec.activation_bits != 8 and spec.mode in (QuantMode.dynamic, QuantMode.static, QuantMode.qat):
        raise NotImplementedError("the torch adapter quantizes activations to 8 bits only "
                                  f"(quantization.activation_bits: got {spec.activation_bits})")
    if spec.calibration.method is not CalibrationMethod.minmax and spec.mode is not QuantMode.static:
        raise NotImplementedError(f"calibration.method {spec.calibration.method.value!r} applies to mode 'static' "
                                  f"only; mode {spec.mode.value!r} uses min-max ranges")
    if spec.training is not None and spec.training.distributed.value != "none":
        raise NotImplementedError("quantization mode 'qat' trains in one process in the torch adapter "
                                  "(training.distributed: 'none')")
    model.eval()
    plan = plan_layers(model, spec, stage_plan(model, spec, ctx))
    _layers.conv1d_to_linear(model, list(plan))
    if spec.mapping is Mapping.log:
        return _apply_log(model, spec, plan, data, ctx)
    if spec.mode is QuantMode.dynamic:
        return _apply_dynamic(model, spec, plan)
    if spec.mode is QuantMode.weight_only:
        return _apply_weight_only(model, spec, plan)
    return _apply_pt2e(model, spec, plan, data, ctx)


def is_quantized(model: Any) -> bool:
    """True when `model` came out of `apply_quantization`."""
    return isinstance(model, nn.Module) and getattr(model, RECORD_ATTR, None) is not None


def quant_record(model: nn.Module) -> QuantRecord:
    rec = getattr(model, RECORD_ATTR, None)
    if rec is None:
        raise ValueError("this model is not quantized (no unicompress quantization record)")
    return rec


def quantized_weights(model: nn.Module) -> dict[str, QuantizedTensor]:
    """{layer name: QuantizedTensor} read back from the native quantized objects.

    Integers are in the neutral [out, in] layout, per-channel parameters along axis 0, and in the
    reference convention (asymmetric: ``[0, 2^b-1]``). Example: ``quantized_weights(q)["...query"].q``.
    """
    if not is_quantized(model):
        return {}
    rec = quant_record(model)
    if rec.mapping == "log":
        raw = _log_raw(model)
    elif rec.mode == "dynamic":
        raw = _dynamic_raw(model)
    elif rec.mode == "weight_only":
        raw = _weight_only_raw(model)
    else:
        raw = {name: (q, s, z) for name, (q, s, z, _) in _pt2e_weights(model.graph).items()}
    out: dict[str, QuantizedTensor] = {}
    for name, value in raw.items():
        lq = rec.layers[name]
        if rec.mapping == "log":
            q, sign, scale = value
            out[name] = QuantizedTensor(q=q, scale=scale, zero_point=np.zeros_like(scale, dtype=np.int64),
                                        bits=lq.bits, axis=0 if lq.per_channel else None, mapping="log",
                                        sign=sign, base=rec.log_base)
            continue
        q, scale, zp = value
        scale = np.asarray(scale, np.float64).reshape(-1)
        zp = np.asarray(zp, np.int64).reshape(-1) + lq.offset
        if not lq.per_channel:
            scale, zp = scale.reshape(()), zp.reshape(())
        out[name] = QuantizedTensor(q=np.asarray(q, np.int64) + lq.offset, scale=scale, zero_point=zp,
                                    bits=lq.bits, axis=0 if lq.per_channel else None)
    return out


# ---- dynamic: torch.ao quantize_dynamic ---------------------------------------------------------------
def _weight_observer_ao(lq: LayerQuant):
    from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

    qmin, qmax = lq.torch_range
    if lq.per_channel:
        scheme = torch.per_channel_symmetric if lq.symmetric else torch.per_channel_affine
        return PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=scheme, quant_min=qmin,
                                                  quant_max=qmax, ch_axis=0)
    scheme = torch.per_tensor_symmetric if lq.symmetric else torch.per_tensor_affine
    return MinMaxObserver.with_args(dtype=torch.qint8, qscheme=scheme, quant_min=qmin, quant_max=qmax)


def _apply_dynamic(model: nn.Module, spec: QuantizationSpec, plan: dict[str, LayerQuant]) -> nn.Module:
    from torch.ao.quantization import PlaceholderObserver, QConfig, quantize_dynamic

    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

    # nn.MultiheadAttention reads out_proj.weight as a tensor; quantize_dynamic swaps it anyway when named
    # explicitly and the attention then fails (AttributeError), so refuse before touching the model
    refused = sorted(n for n in plan if isinstance(model.get_submodule(n), NonDynamicallyQuantizableLinear))
    if refused:
        raise NotImplementedError(f"quantize_dynamic cannot quantize nn.MultiheadAttention.out_proj ({refused[:3]}); "
                                  "exclude them, e.g. quantization.selector.exclude: ['*.self_attn.out_proj']")
    act = PlaceholderObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=255, is_dynamic=True)
    qconfigs = {name: QConfig(activation=act, weight=_weight_observer_ao(lq)) for name, lq in plan.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # quantize_dynamic is deprecated, still the fbgemm path
        model = quantize_dynamic(model, qconfigs, dtype=torch.qint8, inplace=True,
                                 mapping={nn.Linear: FullRangeDynamicLinear})
    done = {n for n, m in model.named_modules() if _is_dynamic_linear(m)}
    missing = sorted(set(plan) - done)
    if missing:
        raise NotImplementedError(f"quantize_dynamic left these layers in float: {missing[:4]}")
    _keep_encoder_slow_path(model)
    setattr(model, RECORD_ATTR, QuantRecord("dynamic", "linear", plan, 8, False))
    return model


class FullRangeDynamicLinear(DynamicLinear):
    """torch.ao's dynamic Linear with 8-bit activations.

    `torch.ao.nn.quantized.dynamic.Linear.forward` calls fbgemm's ``quantized::linear_dynamic`` with
    ``reduce_range=True``, i.e. activations on [0, 127] (7 bits: a guard against 16-bit overflow on CPUs
    without VNNI). The spec's activation_bits 8 means [0, 255], as ONNX Runtime's DynamicQuantizeLinear
    does, so this subclass (swapped in through quantize_dynamic's documented `mapping` argument) calls the
    same native op with ``reduce_range=False``.
    """

    def forward(self, x):
        y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
        return y.to(x.dtype)


def _slow_path_hook(module: nn.Module, args: Any) -> None:
    """A no-op pre-hook: its presence makes nn.TransformerEncoderLayer take its Python (slow) path."""
    return None


def _keep_encoder_slow_path(model: nn.Module) -> None:
    """nn.TransformerEncoderLayer's fast path reads ``linear1.weight.device``; a quantize_dynamic Linear's
    ``weight`` is a method, so the fast path raises AttributeError. The layer skips its fast path when a
    forward hook is attached (its own documented check) and the encoder when use_nested_tensor is False."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and any(_is_dynamic_linear(m) for m in module.modules()):
            module.register_forward_pre_hook(_slow_path_hook)
        if isinstance(module, nn.TransformerEncoder) and any(_is_dynamic_linear(m) for m in module.modules()):
            module.use_nested_tensor = False


def _is_dynamic_linear(module: nn.Module) -> bool:
    return isinstance(module, DynamicLinear)


def _dynamic_raw(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = {}
    for name, module in model.named_modules():
        if not _is_dynamic_linear(module):
            continue
        w = module.weight()
        q = torch.int_repr(w).numpy().astype(np.int64)
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            out[name] = (q, w.q_per_channel_scales().numpy(), w.q_per_channel_zero_points().numpy())
        else:
            out[name] = (q, np.array([w.q_scale()]), np.array([w.q_zero_point()]))
    return out


# ---- weight-only: torchao IntxUnpackedToInt8Tensor ------------------------------------------------------
def _apply_weight_only(model: nn.Module, spec: QuantizationSpec, plan: dict[str, LayerQuant]) -> nn.Module:
    from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor)

    for name, lq in plan.items():
        module = model.get_submodule(name)
        w = module.weight.detach().float()
        block = (1, w.shape[1]) if lq.per_channel else tuple(w.shape)
        mapping = MappingType.SYMMETRIC if lq.symmetric else MappingType.ASYMMETRIC
        dtype = getattr(torch, f"int{lq.bits}")
        qmin, qmax = lq.torch_range
        # torchao's own choose_qparams with the spec's integer range: IntxWeightOnlyConfig would use the
        # full signed range [-2^(b-1), 2^(b-1)-1] (scale amax/127.5), not the narrow range of the spec
        scale, zp = choose_qparams_affine(w, mapping, block, dtype, quant_min=qmin, quant_max=qmax,
                                          eps=torch.finfo(torch.float32).eps, scale_dtype=torch.float32,
                                          zero_point_dtype=torch.int32)
        rows = w.shape[0] // block[0]
        tensor = IntxUnpackedToInt8Tensor.from_hp(
            w, block, dtype, mapping_type=mapping, intx_choose_qparams_algorithm=None,
            custom_scale=scale.reshape(rows, 1), custom_zero_point=zp.to(torch.int8).reshape(rows, 1))
        module.weight = nn.Parameter(tensor, requires_grad=False)
    setattr(model, RECORD_ATTR, QuantRecord("weight_only", "linear", plan))
    return model


def _weight_only_raw(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = {}
    for name in quant_record(model).layers:
        t = model.get_submodule(name).weight
        out[name] = (t.qdata.detach().numpy().astype(np.int64), t.scale.detach().float().numpy().reshape(-1),
                     t.zero_point.detach().numpy().astype(np.int64).reshape(-1))
    return out


# ---- static / QAT: torchao PT2E ------------------------------------------------------------------------
def _make_observers() -> dict[str, type]:
    """Observer subclasses for the calibration methods torchao has no observer for (built on first use,
    so importing this module does not import torchao)."""
    from torchao.quantization.pt2e.observer import MinMaxObserver, PerChannelMinMaxObserver

    class PercentileObserver(MinMaxObserver):
        """Activation range = the p-th percentile of |x| (symmetric) or the (100-p, p) percentiles of x.

        Keeps a bounded sample of the observed values (every k-th element) and hands the percentile range
        to torchao's `_calculate_qparams`, so dtype, qscheme and quant_min/quant_max stay torchao's.
        """

        def __init__(self, percentile: float = 99.99, max_samples: int = 1 << 20, **kwargs):
            super().__init__(**kwargs)
            self.percentile = float(percentile)
            self.max_samples = int(max_samples)
            self._samples: list[torch.Tensor] = []

        def forward(self, x_orig):
            if x_orig.numel() == 0:
                return x_orig
            flat = x_orig.detach().float().reshape(-1)
            stride = max(1, flat.numel() * 8 // self.max_samples)
            self._samples.append(flat[::stride].clone())
            if sum(t.numel() for t in self._samples) > 2 * self.max_samples:  # bounded memory on long runs
                self._samples = [torch.cat(self._samples)[::2]]
            return super().forward(x_orig)

        @torch.jit.export
        def calculate_qparams(self):
            if not self._samples:
                return super().calculate_qparams()
            x = torch.cat(self._samples).double().numpy()
            lo, hi = _percentile_range(x[None, :], self.percentile, _symmetric(self.qscheme))
            return self._calculate_qparams(torch.tensor(lo[0]), torch.tensor(hi[0]))

    class WeightClipObserver(PerChannelMinMaxObserver):
        """Weight range by percentile or by the MSE-minimising clip, per channel or per tensor.

        percentile: |w| (symmetric) or w clipped at the p-th percentile of each channel; mse: the fraction
        of the min-max range (1.0 down to 0.3 in 1% steps) whose quantize-dequantize round trip, done with
        this observer's own qparams, has the lowest mean squared error. With ``per_tensor`` the whole
        tensor is one channel and the qscheme is the per-tensor one.
        """

        def __init__(self, method: str = "minmax", percentile: float = 99.99, per_tensor: bool = False,
                     **kwargs):
            if per_tensor:
                kwargs["qscheme"] = {torch.per_tensor_symmetric: torch.per_channel_symmetric,
                                     torch.per_tensor_affine: torch.per_channel_affine}[kwargs["qscheme"]]
            super().__init__(**kwargs)
            self.method, self.percentile, self.per_tensor = method, float(percentile), bool(per_tensor)
            if per_tensor:  # report the per-tensor scheme to prepare/convert
                self.qscheme = {torch.per_channel_symmetric: torch.per_tensor_symmetric,
                                torch.per_channel_affine: torch.per_tensor_affine}[self.qscheme]
            self._weight: Optional[torch.Tensor] = None

        def forward(self, x_orig):
            self._weight = x_orig.detach().clone()
            return x_orig

        def _rows(self) -> torch.Tensor:
            w = self._weight.double()
            if self.per_tensor:
                return w.reshape(1, -1)
            return w.transpose(0, self.ch_axis).reshape(w.shape[self.ch_axis], -1)

        def _qparams(self, lo: torch.Tensor, hi: torch.Tensor):
            scheme = self.qscheme
            if self.per_tensor:  # torchao's per-tensor branch wants 0-d min/max
                return self._calculate_qparams(lo.reshape(()).float(), hi.reshape(()).float())
            return self._calculate_qparams(lo.float(), hi.float())

        @torch.jit.export
        def calculate_qparams(self):
            if self._weight is None:
                raise RuntimeError("the weight observer saw no weight")
            rows = self._rows()
            if self.method == "percentile":
                lo, hi = _percentile_range(rows.numpy(), self.percentile, _symmetric(self.qscheme))
                return self._qparams(torch.from_numpy(lo), torch.from_numpy(hi))
            lo0, hi0 = rows.min(dim=1).values, rows.max(dim=1).values
            if self.method != "mse":
                return self._qparams(lo0, hi0)
            best_err = torch.full_like(lo0, float("inf"))
            best_lo, best_hi = lo0.clone(), hi0.clone()
            for frac in np.linspace(1.0, 0.3, 71):
                lo, hi = lo0 * frac, hi0 * frac
                scale, zp = self._qparams(lo, hi)
                s, z = scale.double().reshape(-1, 1), zp.double().reshape(-1, 1)
                q = torch.clamp(torch.round(rows / s) + z, self.quant_min, self.quant_max)
                err = (((q - z) * s - rows) ** 2).mean(dim=1)
                better = err < best_err - 1e-15
                best_err = torch.where(better, err, best_err)
                best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
            return self._qparams(best_lo, best_hi)

    return {"percentile": PercentileObserver, "weight_clip": WeightClipObserver}


def _symmetric(qscheme) -> bool:
    return qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric)


def _percentile_range(rows: np.ndarray, percentile: float, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (lo, hi): +-percentile(|x|) when symmetric, else the (100-p, p) percentiles."""
    if symmetric:
        amax = np.percentile(np.abs(rows), percentile, axis=1)
        return -amax, amax
    return np.percentile(rows, 100 - percentile, axis=1), np.percentile(rows, percentile, axis=1)


_OBSERVERS: dict[str, type] = {}


def observer_class(kind: str) -> type:
    """The observer subclass ``"percentile"`` (activations) or ``"weight_clip"`` (weights)."""
    if not _OBSERVERS:
        _OBSERVERS.update(_make_observers())
    return _OBSERVERS[kind]


def _pt2e_config(lq: LayerQuant, spec: QuantizationSpec, is_qat: bool):
    from torchao.quantization.pt2e import (FusedMovingAvgObsFakeQuantize, HistogramObserver, MinMaxObserver,
                                           MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
                                           PerChannelMinMaxObserver)
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec as QSpec

    eps = {"eps": float(torch.finfo(torch.float32).eps)}
    amin, amax_, adtype = _activation_range(spec)
    a_scheme = torch.per_tensor_symmetric if spec.activation_scheme is Scheme.symmetric else torch.per_tensor_affine
    if is_qat:
        act_ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, **eps)
    else:
        method = spec.calibration.method
        if method is CalibrationMethod.minmax:
            act_ctr = MinMaxObserver.with_args(**eps)
        elif method is CalibrationMethod.mse:
            act_ctr = HistogramObserver.with_args(**eps)  # L2-norm minimising range search
        else:
            act_ctr = observer_class("percentile").with_args(percentile=spec.calibration.percentile, **eps)
    act = QSpec(dtype=adtype, quant_min=amin, quant_max=amax_, qscheme=a_scheme, is_dynamic=False,
                observer_or_fake_quant_ctr=act_ctr)
    qmin, qmax = lq.torch_range
    if lq.per_channel:
        w_scheme = torch.per_channel_symmetric if lq.symmetric else torch.per_channel_affine
        w_obs = MovingAveragePerChannelMinMaxObserver if is_qat else PerChannelMinMaxObserver
    else:
        w_scheme = torch.per_tensor_symmetric if lq.symmetric else torch.per_tensor_affine
        w_obs = MovingAverageMinMaxObserver if is_qat else MinMaxObserver
    method = spec.calibration.method
    if is_qat:  # averaging_constant 1: the weight range is the current weights' (not a stale average)
        w_ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=w_obs, averaging_constant=1.0, **eps)
    elif method is CalibrationMethod.minmax:
        w_ctr = w_obs.with_args(**eps)
    else:  # the spec's clipping applies to weights too (reference: quantize_weight(method=...))
        w_ctr = observer_class("weight_clip").with_args(method=method.value, percentile=spec.calibration.percentile,
                                                        per_tensor=not lq.per_channel, ch_axis=0, **eps)
    weight = QSpec(dtype=torch.int8, quant_min=qmin, quant_max=qmax, qscheme=w_scheme,
                   ch_axis=0 if lq.per_channel else None, is_dynamic=False, observer_or_fake_quant_ctr=w_ctr)
    return QuantizationConfig(act, act, weight, None, is_qat)


def _dynamic_shapes(example: dict[str, torch.Tensor]) -> dict[str, dict[int, Any]]:
    auto = torch.export.Dim.AUTO
    # batch always dynamic; integer [B, L] inputs (token ids, masks) also in length
    return {k: ({0: auto, 1: auto} if (not v.is_floating_point() and v.dim() == 2) else {0: auto})
            for k, v in example.items()}


def _export_graph(model: nn.Module, example: dict[str, torch.Tensor], training: bool) -> torch.fx.GraphModule:
    # the model itself is exported (named inputs as keywords) so nn_module_stack carries its own module names
    model.train(training)
    ep = torch.export.export(model, (), dict(example), dynamic_shapes=_dynamic_shapes(example), strict=False)
    return ep.module()


def _apply_pt2e(model: nn.Module, spec: QuantizationSpec, plan: dict[str, LayerQuant], data: Optional[TaskData],
                ctx: StageContext) -> nn.Module:
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.composable_quantizer import ComposableQuantizer
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    is_qat = spec.mode is QuantMode.qat
    if data is None:
        raise ValueError(f"quantization mode {spec.mode.value!r} needs data: calibration (static) or training (qat)")
    batches = [to_torch_inputs(x) for x in data.calibration_batches(spec.calibration.num_batches)]
    if not batches:
        raise ValueError("quantization mode 'static' needs calibration data; TaskData gave no batches")
    float_model = copy.deepcopy(model)  # kept for ONNX export (its weights are replaced by the dequantized ints)
    x86 = X86InductorQuantizer()
    # one qconfig per selected module (never set_global): unselected layers (pooler, head, skipped) stay float
    asymmetric = {}
    for name, lq in plan.items():
        if lq.symmetric:
            x86.set_module_name_qconfig(name, _pt2e_config(lq, spec, is_qat))
        else:  # X86InductorQuantizer's get_weight_qspec refuses affine weight qschemes
            asymmetric[name] = _pt2e_config(lq, spec, is_qat)
    quantizer = ComposableQuantizer([x86, linear_quantizer(asymmetric)]) if asymmetric else x86
    graph = _export_graph(model, batches[0], training=is_qat)
    if is_qat:
        prepared = prepare_qat_pt2e(graph, quantizer)
        move_exported_model_to_train(prepared)
        holder = _GraphHolder(prepared)
        train_loop(holder, data, spec.training, ctx, keep_zeros=False)
        move_exported_model_to_eval(prepared)
        with torch.no_grad():  # one more observation so the weight ranges are those of the final weights
            prepared(**batches[0])
    else:
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad(), ctx.bar("calibrate", len(batches)) as bar:
            for batch in batches:
                prepared(**batch)
                bar.update(1)
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    found = set(_pt2e_weights(converted))
    missing = sorted(set(plan) - found)
    if missing:
        raise NotImplementedError(f"the PT2E quantizer did not quantize {missing[:4]}")
    act_bits = spec.activation_bits
    record = QuantRecord(spec.mode.value, "linear", plan, act_bits, spec.activation_scheme is Scheme.symmetric)
    return PT2EQuantizedModel(converted, float_model, record)


def linear_quantizer(configs: dict[str, Any]):
    """A PT2E `Quantizer` (torchao's extension point) that annotates the aten.linear of the named modules
    with their QuantizationConfig: input activation and weight, any qscheme (X86InductorQuantizer accepts
    only symmetric weights)."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer

    class LinearQuantizer(Quantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
                    continue
                cfg = configs.get(_module_name(node))
                if cfg is None or "quantization_annotation" in node.meta:
                    continue
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={node.args[0]: cfg.input_activation, node.args[1]: cfg.weight},
                    _annotated=True)
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            pass

    return LinearQuantizer()


class _GraphHolder(nn.Module):
    """Lets the shared train loop (which calls ``model(**inputs)`` and `.train()`) drive a PT2E graph."""

    def __init__(self, graph: torch.fx.GraphModule):
        super().__init__()
        self.graph = graph

    def forward(self, **inputs):
        return self.graph(**inputs)

    def train(self, mode: bool = True):  # exported graphs refuse .train(); torchao moves them instead
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph)
        self.training = mode
        return self

    def eval(self):
        return self.train(False)


class PT2EQuantizedModel(nn.Module):
    """A model quantized with torchao PT2E: the converted graph (Q/DQ ops, int8 weight constants).

    Call it like the original (named inputs); it returns the logits. `graph` is the native object.
    """

    def __init__(self, graph: torch.fx.GraphModule, float_model: nn.Module, record: QuantRecord):
        super().__init__()
        self.graph = graph
        self.__dict__["float_model"] = float_model  # not a submodule: layer discovery must not see it
        self.__dict__["config"] = getattr(float_model, "config", None)
        setattr(self, RECORD_ATTR, record)
        self.training = False

    def forward(self, **inputs):
        return self.graph(**inputs)

    def train(self, mode: bool = True):
        # the converted graph has no training behaviour to switch (exported graphs refuse .train());
        # keep the flag so generic code (model.train(was_training)) works
        self.training = bool(mode)
        return self


def _qd_ops():
    ops = torch.ops.quantized_decomposed
    return ({ops.dequantize_per_channel.default, ops.dequantize_per_tensor.default},
            ops.dequantize_per_tensor.default)


def _module_name(node: torch.fx.Node) -> Optional[str]:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    return list(stack.values())[-1][0]


def _const(graph: torch.fx.GraphModule, arg: Any) -> Any:
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        obj = graph
        for part in arg.target.split("."):
            obj = getattr(obj, part)
        return obj
    return arg


def _pt2e_weights(graph: torch.fx.GraphModule) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, Any]]:
    """{module: (int weight, scale, zero point, activation qparams or None)} from the converted graph."""
    dq_ops, dq_tensor = _qd_ops()
    out = {}
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
            continue
        w = node.args[1]
        if not (isinstance(w, torch.fx.Node) and w.target in dq_ops):
            continue
        name = _module_name(node)
        if name is None:
            continue
        q = _const(graph, w.args[0])
        scale = torch.as_tensor(_const(graph, w.args[1])).detach().double().numpy().reshape(-1)
        zp = torch.as_tensor(_const(graph, w.args[2])).detach().numpy().astype(np.int64).reshape(-1)
        act = None
        x = node.args[0]
        if isinstance(x, torch.fx.Node) and x.target is dq_tensor:
            act = (float(_const(graph, x.args[1])), int(_const(graph, x.args[2])), x.args[5])
        out[name] = (q.detach().numpy().astype(np.int64), scale, zp, act)
    return out


# ---- log mapping: emulated ---------------------------------------------------------------------------------
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


def _apply_log(model: nn.Module, spec: QuantizationSpec, plan: dict[str, LayerQuant], data: Optional[TaskData],
               ctx: StageContext) -> nn.Module:
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


def _log_raw(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = {}
    for name in quant_record(model).layers:
        p = model.get_submodule(name).parametrizations.weight[0]
        out[name] = (p.q.numpy().astype(np.int64), p.sign.numpy().astype(np.int8),
                     p.scale.numpy().astype(np.float64) if p.per_channel else p.scale.numpy().reshape(()).astype(np.float64))
    return out


def dequantized_weights(model: nn.Module, names: Optional[list[str]] = None) -> dict[str, np.ndarray]:
    """Float32 [out, in] weights of a quantized model as it computes with them (integers x scales for the
    quantized layers, the float weights elsewhere): what `Adapter.weights` should return for it."""
    return _layers.weights(dequantized_model(model), names)


def describe(model: nn.Module) -> list[LayerStats]:
    """Per-layer stats of a quantized model: quantized layers report their weight bits and the
    non-zeros of their dequantized integers; the other layers are described as float."""
    qw = quantized_weights(model)
    rec = quant_record(model)
    # after PTQ the float model still holds every unquantized weight as it is: describe it in place
    # (the dequantized twin is a deep copy: 0.4 s of a 7 s MiniLM int8 run); QAT trained them, so
    # those need the twin
    source = model.float_model if isinstance(model, PT2EQuantizedModel) and rec.mode != "qat" else \
        dequantized_model(model)
    rows = _layers.describe(source)
    for row in rows:
        if row.name in qw:
            row.bits = qw[row.name].bits
            row.nonzero = _nonzero_levels(qw[row.name])
    return rows


def _nonzero_levels(t: QuantizedTensor) -> int:
    """Non-zeros of the dequantized weight, counted on the integers (level == zero-point is 0.0)."""
    if t.mapping == "log" or not np.all(np.asarray(t.scale) != 0):  # a zero scale zeroes any level
        return count_nonzero(t.dequantize())
    zp = np.asarray(t.zero_point)
    if zp.ndim:  # per channel along axis 0
        zp = zp.reshape((-1,) + (1,) * (np.ndim(t.q) - 1))
    return count_nonzero(np.asarray(t.q) != zp)


# ---- float twin + ONNX --------------------------------------------------------------------------------------
def dequantized_model(model: nn.Module) -> nn.Module:
    """A float copy of a quantized model whose weights are the dequantized integers (for export/inspection)."""
    rec = quant_record(model)
    if isinstance(model, PT2EQuantizedModel):
        twin = copy.deepcopy(model.float_model)
        # QAT trained every parameter inside the graph: carry them over (same FQNs after torch.export)
        trained = model.graph.state_dict()
        own = twin.state_dict()
        twin.load_state_dict({k: v for k, v in trained.items() if k in own and v.shape == own[k].shape},
                             strict=False)
    else:
        twin = copy.deepcopy(model)
        if hasattr(twin, RECORD_ATTR):
            delattr(twin, RECORD_ATTR)
    qw = quantized_weights(model)
    for name in rec.layers:
        module = twin.get_submodule(name)
        w = torch.as_tensor(qw[name].dequantize(), dtype=torch.float32)
        if rec.mapping == "log" or rec.mode == "dynamic":
            # a fresh nn.Linear: parametrize.remove_parametrizations on a deepcopy deletes the weight property
            # from the ParametrizedLinear class the copy shares with the original model, breaking it
            bias = module.bias() if rec.mode == "dynamic" and rec.mapping != "log" else module.bias
            new = nn.Linear(module.in_features, module.out_features, bias=bias is not None)
            with torch.no_grad():
                new.weight.copy_(w)
                if bias is not None:
                    new.bias.copy_(bias.detach())
            _layers.replace_module(twin, name, new)
        else:
            module.weight = nn.Parameter(w, requires_grad=False)
    twin.eval()
    return twin


class _Positional(nn.Module):
    """Positional-argument front of a model for the TorchScript ONNX exporter; returns the logits."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *args):
        return logits_of(call_model(self.model, dict(zip(self.names, args))))


def export_float_onnx(model: nn.Module, path: Path, example: Inputs, opset: int = 17) -> Path:
    """Export a float torch model with the TorchScript exporter (named inputs, output ``logits``,
    dynamic batch and sequence axes). Written atomically."""
    tensors = to_torch_inputs(example)
    names = list(tensors)
    axes = {n: ({0: "batch", 1: "sequence"} if (not t.is_floating_point() and t.dim() == 2) else {0: "batch"})
            for n, t in tensors.items()}
    axes["logits"] = {0: "batch"}
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Positional(model, names), tuple(tensors.values()), str(tmp), input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    return Path(path)


def export_onnx(model: nn.Module, path: Path, example: Inputs, opset: int = 17) -> Path:
    """Write a quantized model as ONNX: QDQ (static/qat/weight-only) or integer ops (dynamic).

    The integer weights, scales and zero-points (and the activation qparams of static/QAT) written into
    the file are the ones the torch toolkit computed. Log-quantized weights have no ONNX operator and
    are written as their dequantized float values.

    Example: ``export_onnx(qmodel, "model.onnx", {"input_ids": ids, "attention_mask": mask})``.
    """
    import onnx

    path = Path(path)
    rec = quant_record(model)
    twin = dequantized_model(model)
    with atomic_path(path) as tmp:
        export_float_onnx(twin, tmp, example, opset)
        if rec.mapping != "log":
            proto = onnx.load(str(tmp))
            qw = quantized_weights(model)
            acts = ({n: a for n, (_, _, _, a) in _pt2e_weights(model.graph).items()}
                    if isinstance(model, PT2EQuantizedModel) else {})
            floats = {n: twin.get_submodule(n).weight.detach().numpy() for n in rec.layers}
            rewrite_qdq(proto, rec, qw, acts, floats)
            onnx.save(proto, str(tmp))
    return path


# ---- QDQ / integer-op rewrite of the exported float graph ----------------------------------------------------
def _fingerprint(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.shape, hash(a.tobytes())


def rewrite_qdq(proto: Any, record: QuantRecord, qweights: dict[str, QuantizedTensor],
                activations: dict[str, Any], float_weights: dict[str, np.ndarray]) -> int:
    """Rewrite the MatMul/Gemm of every quantized Linear in an exported float ONNX graph, in place.

    static/qat: ``x -> QuantizeLinear -> DequantizeLinear -> MatMul <- DequantizeLinear <- int weight``
    (the activation qparams are torch's calibrated ones); dynamic: ``DynamicQuantizeLinear -> MatMulInteger
    -> Cast -> Mul(x_scale) -> Mul(w_scale)``; weight-only: the weight DequantizeLinear only.
    Layers are found by value: the MatMul/Gemm weight initializer equals the layer's dequantized weight
    (`float_weights`, [out, in]) or its transpose; TorchScript scope names lose module names when a
    parent calls a grandchild directly, values do not. Returns the number of layers rewritten; raises
    when a quantized layer is not found in the graph.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    new_inits: list[Any] = []
    before: dict[str, list[Any]] = {}  # node name -> nodes to insert before it
    replace: dict[str, list[Any]] = {}  # node name -> nodes that replace it
    q_cache: dict[tuple, str] = {}
    dq_cache: dict[str, tuple[str, str, str]] = {}
    done = set()

    def const(name: str, value: np.ndarray) -> str:
        new_inits.append(numpy_helper.from_array(value, name))
        return name

    by_value: dict[tuple, tuple[str, bool]] = {}  # fingerprint -> (layer, stored transposed [in, out])
    for lname, w in float_weights.items():
        if lname in qweights:
            by_value[_fingerprint(w)] = (lname, False)
            by_value[_fingerprint(np.asarray(w).T)] = (lname, True)
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w_init = inits[node.input[1]]
        hit = by_value.get(_fingerprint(numpy_helper.to_array(w_init)))
        if hit is None or hit[0] in done:
            continue
        name, transposed = hit
        op = node.op_type
        qt, lq = qweights[name], record.layers[name]
        trans_b = not transposed
        if op == "MatMul" and trans_b:
            continue  # a MatMul by W [out, in] would be another computation
        if op == "Gemm" and any(a.name in ("alpha", "beta") and abs(a.f - 1.0) > 0 for a in node.attribute):
            raise ValueError(f"ONNX node {node.name}: Gemm with alpha/beta != 1 is not rewritten")
        if op == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute) != trans_b:
            continue
        w_shape = tuple(w_init.dims)
        # [in, out] for MatMul and Gemm without transB; [out, in] with transB
        q = qt.q if trans_b else qt.q.T
        if tuple(q.shape) != w_shape:
            raise ValueError(f"{name}: ONNX weight shape {w_shape} does not match the quantized {qt.q.shape}")
        qdtype = np.int8 if lq.symmetric else np.uint8
        axis = (0 if trans_b else 1) if qt.axis is not None else None
        scale = np.asarray(qt.scale, np.float32).reshape(-1 if axis is not None else ())
        zp = np.asarray(qt.zero_point).astype(qdtype).reshape(-1 if axis is not None else ())
        wq = const(f"{name}.weight_quantized", np.ascontiguousarray(q.astype(qdtype)))
        ws = const(f"{name}.weight_scale", scale)
        wz = const(f"{name}.weight_zero_point", zp)
        x = node.input[0]
        if record.mode == "dynamic":
            if x not in dq_cache:
                base = f"{x}.dynamic_quantized"
                dq_cache[x] = (base, base + ".scale", base + ".zero_point")
                before.setdefault(node.name, []).append(helper.make_node(
                    "DynamicQuantizeLinear", [x], list(dq_cache[x]), name=f"{x}/DynamicQuantizeLinear"))
            xq, xs, xz = dq_cache[x]
            wq_in_out = wq
            if trans_b:  # MatMulInteger wants [in, out]
                wq_in_out = const(f"{name}.weight_quantized_t", np.ascontiguousarray(qt.q.T.astype(qdtype)))
            p = f"/{name.replace('.', '/')}"
            acc, acc_f, both = p + "/MatMulInteger_output", p + "/Cast_output", p + "/Mul_scales_output"
            out = node.output[0]
            mul = out if op == "MatMul" else p + "/Mul_output"
            # ORT's own dynamic pattern (fused into MatMulIntegerToFloat): Cast(MatMulInteger) * (x_scale * w_scale)
            nodes = [helper.make_node("MatMulInteger", [xq, wq_in_out, xz, wz], [acc], name=p + "/MatMulInteger"),
                     helper.make_node("Mul", [xs, ws], [both], name=p + "/Mul_scales"),
                     helper.make_node("Cast", [acc], [acc_f], to=TensorProto.FLOAT, name=p + "/Cast"),
                     helper.make_node("Mul", [acc_f, both], [mul], name=p + "/Mul")]
            if op == "Gemm":
                if len(node.input) > 2 and node.input[2]:
                    nodes.append(helper.make_node("Add", [mul, node.input[2]], [out], name=p + "/Add_bias"))
                else:
                    nodes[-1].output[0] = out
            replace[node.name] = nodes
        else:
            dq_w = f"{name}.weight_dequantized"
            attrs = {"axis": axis} if axis is not None else {}
            pre = [helper.make_node("DequantizeLinear", [wq, ws, wz], [dq_w], name=f"{dq_w}/DequantizeLinear",
                                    **attrs)]
            node.input[1] = dq_w
            act = activations.get(name)
            if record.mode in ("static", "qat"):
                if act is None:
                    raise ValueError(f"{name}: the PT2E graph has no activation quantization for this layer")
                a_scale, a_zp, a_dtype = act
                adt = np.uint8 if a_dtype == torch.uint8 else np.int8
                key = (x, a_scale, a_zp, adt)
                if key not in q_cache:
                    tag = f"{x}.quantized_{len(q_cache)}"
                    s_name = const(tag + ".scale", np.array(a_scale, np.float32))
                    z_name = const(tag + ".zero_point", np.array(a_zp, adt))
                    pre.append(helper.make_node("QuantizeLinear", [x, s_name, z_name], [tag],
                                                name=tag + "/QuantizeLinear"))
                    q_cache[key] = tag
                tag = q_cache[key]
                dq_x = f"{tag}.dequantized_for_{name}"
                pre.append(helper.make_node("DequantizeLinear", [tag, tag + ".scale", tag + ".zero_point"],
                                            [dq_x], name=dq_x + "/DequantizeLinear"))
                node.input[0] = dq_x
            before.setdefault(node.name, []).extend(pre)
        done.add(name)
    missing = sorted(set(qweights) - done)
    if missing:
        raise ValueError(f"quantized layers not found in the exported ONNX graph: {missing[:4]}")
    nodes = []
    for node in graph.node:
        nodes.extend(before.get(node.name, []))
        nodes.extend(replace.get(node.name, [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return len(done)


__all__ = ["apply_quantization", "quantized_weights", "is_quantized", "export_onnx", "export_float_onnx",
           "dequantized_model", "PT2EQuantizedModel", "FullRangeDynamicLinear", "LogQuantWeight", "LayerQuant", "QuantRecord",
           "plan_layers", "observer_class", "describe", "dequantized_weights", "RECORD_ATTR", "rewrite_qdq"]
