"""QuantizationSpec on Paddle: paddle.quantization PTQ/QAT with PaddleSlim observers and quanters.

static      PTQ: weight observer (per-channel AbsMaxChannelWise, per-tensor Absmax) and an
            activation observer chosen by calibration.method (Absmax / Hist percentile / MSE), calibrated on
            data, then `convert` (weights become integers, QDQ layers around them)
weight_only PTQ with weight observers only
qat         QAT: FakeQuanterWithAbsMaxObserver (activations), FakeQuanterChannelWiseAbsMaxObserver or
            FakeQuanterWithAbsMaxObserver (weights), trained, then `convert`
log mapping emulated: a Linear whose weight is log-fake-quantized with Paddle ops (straight-through in QAT)

Paddle's quanters are symmetric abs-max: q = round(w / amax * (2^(b-1)-1)), so the neutral scale is
amax / (2^(b-1)-1) and the zero-point 0. Converted layers keep the integers in `weight` ([in, out]).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from unicompress.backend.adapter import StageContext
from unicompress.backend.plan import StagePlan
from unicompress.backend.types import QuantizedTensor, TaskData
from unicompress.specs import CalibrationMethod, Mapping, QuantGranularity, QuantizationSpec, QuantMode, Scheme

from . import compat
from .compat import paddle
from .layers import compressible, to_tensors
from .training import train

LOG_ATTR = "_unicompress_log"


def _settings(spec: QuantizationSpec, name: str) -> dict:
    """Bits / granularity / scheme of one planned layer (the core's override rule, `planner.layer_settings`)."""
    from unicompress.planner import layer_settings
    out = layer_settings(spec, name)
    if out["scheme"] is not Scheme.symmetric:
        raise NotImplementedError("Paddle's quanters are symmetric abs-max: scheme 'asymmetric' is not supported")
    return out


def _weight_factory(spec: QuantizationSpec, s: dict):
    compat.paddleslim()
    from paddleslim.quant import observers as obs
    from paddleslim.quant import quanters

    per_channel = s["granularity"] is QuantGranularity.per_channel
    if spec.mode is QuantMode.qat:
        if per_channel:
            return compat.with_zero_points(quanters.FakeQuanterChannelWiseAbsMaxObserver(bit_length=s["bits"]))
        from paddle.quantization.quanters import FakeQuanterWithAbsMaxObserver
        return compat.with_zero_points(FakeQuanterWithAbsMaxObserver(moving_rate=0.9, bit_length=s["bits"]))
    # weights always take their full abs-max range (the calibration method is about activations);
    # PaddleSlim's MSE weight observers clip and let q reach -2^(b-1), outside the narrow grid
    if per_channel:
        return obs.AbsMaxChannelWiseWeightObserver(quant_bits=s["bits"])
    return obs.AbsmaxObserver(quant_bits=s["bits"])


def _activation_factory(spec: QuantizationSpec):
    compat.paddleslim()
    from paddleslim.quant import observers as obs

    bits = spec.activation_bits
    if spec.mode is QuantMode.weight_only:
        return None
    if spec.mode is QuantMode.qat:
        from paddle.quantization.quanters import FakeQuanterWithAbsMaxObserver
        return compat.with_zero_points(FakeQuanterWithAbsMaxObserver(moving_rate=0.9, bit_length=bits))
    if spec.activation_scheme is not Scheme.asymmetric and spec.activation_scheme is not Scheme.symmetric:
        raise NotImplementedError(spec.activation_scheme)
    method = spec.calibration.method
    if method is CalibrationMethod.percentile:
        return compat.fixed_hist_observer(bits, spec.calibration.percentile / 100.0)
    if method is CalibrationMethod.mse:
        return compat.fixed_mse_observer(bits)
    return obs.AbsmaxObserver(quant_bits=bits)


def selected(model: Any, spec: QuantizationSpec, plan: StagePlan) -> dict[str, tuple[Any, dict]]:
    """name -> (Linear, settings) of every layer the plan quantizes (its selection minus `skip` overrides)."""
    layers = compressible(model)
    return {name: (layers[name], _settings(spec, name)) for name in plan.selected}


def _config(model: Any, spec: QuantizationSpec, plan: Optional[StagePlan] = None):
    """A QuantConfig covering exactly the planned layers (plan: the core's, made here when not given)."""
    from paddle.quantization import QuantConfig

    if plan is None:
        from unicompress.planner import plan_stage

        from .backend import PaddleAdapter
        plan = plan_stage(PaddleAdapter(), model, spec)

    cfg = QuantConfig(activation=None, weight=None)  # only the layers added below are quantized
    chosen = selected(model, spec, plan)
    for name, (layer, s) in chosen.items():
        cfg.add_layer_config([layer], activation=_activation_factory(spec), weight=_weight_factory(spec, s))
    return cfg, chosen


def _calibrate(model: Any, data: Optional[TaskData], spec: QuantizationSpec) -> int:
    if data is None:
        raise ValueError("static quantization calibrates activation ranges: give TaskData with calibration batches")
    names = getattr(model, "input_names", ("input_ids", "attention_mask"))
    n = 0
    with paddle.no_grad():
        for x in data.calibration_batches(spec.calibration.num_batches):
            model(*to_tensors(x, names))
            n += 1
    if n == 0:
        raise ValueError("TaskData gave no calibration batches")
    return n


def _observe_weights(model: Any) -> None:
    """Weight observers see the weights once, so weight-only PTQ needs no data."""
    from paddle.nn.quant.qat.linear import QuantedLinear
    with paddle.no_grad():
        for layer in model.sublayers():
            if isinstance(layer, QuantedLinear) and layer.weight_quanter is not None:
                layer.weight_quanter(layer.weight)


def quantize(model: Any, spec: QuantizationSpec, data: Optional[TaskData], ctx: StageContext) -> Any:
    """QuantizationSpec handler."""
    if spec.mode is QuantMode.dynamic:
        raise NotImplementedError("Paddle has no dynamic (on-the-fly activation) quantization of Linear layers")
    if spec.mapping is Mapping.log:
        return _log_quantize(model, spec, data, ctx)
    from paddle.quantization import PTQ, QAT

    cfg, chosen = _config(model, spec, ctx.plan)
    if spec.mode is QuantMode.qat:
        q = QAT(cfg)
        model.train()
        qmodel = q.quantize(model, inplace=True)
        train(qmodel, data, spec.training, ctx)
        # the weight quanters last saw the weights before the final optimizer step: let them see the
        # trained weights once, else convert clips the grown weights to -128/127 with a stale scale
        qmodel.train()
        _observe_weights(qmodel)
    else:
        q = PTQ(cfg)
        model.eval()
        qmodel = q.quantize(model, inplace=True)
        _observe_weights(qmodel)
        if spec.mode is QuantMode.static:
            _calibrate(qmodel, data, spec)
    qmodel.eval()
    converted = q.convert(qmodel, inplace=True)
    compat.pir_safe_qdq(converted)  # so paddle.jit.save / export can trace it under PIR
    return converted


# ---- reading back what the toolkit computed --------------------------------------------------------------
def _converted_linears(model: Any) -> dict[str, Any]:
    from paddle.nn.quant.qat.linear import QuantedLinear
    return {n: l for n, l in compressible(model).items()
            if isinstance(l, QuantedLinear) and l.converted and l.weight_quanter is not None}


def weight_qparams(layer: Any) -> tuple[np.ndarray, int, Optional[int]]:
    """(amax scales, bits, Paddle quant axis or None) of a converted QuantedLinear's weight."""
    deq = layer.weight_quanter._dequanter
    scales = deq._scales.numpy().astype(np.float64).reshape(-1)
    return scales, int(deq._bit_length), (int(deq._quant_axis) if scales.size > 1 else None)


def activation_scale(layer: Any) -> Optional[float]:
    """The calibrated activation abs-max of a converted QuantedLinear (None when activations stay float)."""
    aq = getattr(layer, "activation_quanter", None)
    if aq is None or getattr(aq, "_quanter", None) is None:
        return None
    return float(aq._quanter._scales.numpy().reshape(-1)[0])


def activation_bits(layer: Any) -> Optional[int]:
    """Bits of a converted QuantedLinear's activation quantizer (None when activations stay float)."""
    aq = getattr(layer, "activation_quanter", None)
    if aq is None or getattr(aq, "_quanter", None) is None:
        return None
    return int(aq._quanter._bit_length)


def quantized_weights(model: Any) -> dict[str, QuantizedTensor]:
    """{layer: QuantizedTensor} with the integers Paddle stored and its scales (neutral [out, in], axis 0)."""
    out = {}
    for name, layer in _converted_linears(model).items():
        amax, bits, axis = weight_qparams(layer)
        qmax = 2 ** (bits - 1) - 1
        q = np.rint(layer.weight.numpy().T).astype(np.int64)
        scale = amax / qmax
        out[name] = QuantizedTensor(q, scale if axis is not None else np.asarray(scale[0]),
                                    np.zeros_like(scale, dtype=np.int64) if axis is not None else np.asarray(0),
                                    bits, 0 if axis is not None else None)
    for name, layer in compressible(model).items():
        info = getattr(layer, LOG_ATTR, None)
        if info is not None:
            q, sign, scale = layer.log_codes()
            scale = scale if info["per_channel"] else np.asarray(scale[0])
            out[name] = QuantizedTensor(q, scale, np.zeros_like(scale, dtype=np.int64), info["bits"],
                                        0 if info["per_channel"] else None, "log", sign, info["base"])
    return out


def layer_bits(layer: Any) -> int:
    from paddle.nn.quant.qat.linear import QuantedLinear
    if isinstance(layer, QuantedLinear) and layer.converted and layer.weight_quanter is not None:
        return int(layer.weight_quanter._dequanter._bit_length)
    info = getattr(layer, LOG_ATTR, None)
    return int(info["bits"]) if info else 32


# ---- log mapping (emulated with Paddle ops) --------------------------------------------------------------
class LogQuantLinear(paddle.nn.Linear):
    """A Linear whose weight is log-quantized on the fly: |w| ~= S * base^-q, q in [0, 2^(b-1)-1],
    S = per-output-channel (or tensor) amax; values below the smallest level become 0. In training the
    rounding passes gradients straight through (QAT)."""

    def setup(self, bits: int, base: float, per_channel: bool) -> "LogQuantLinear":
        object.__setattr__(self, LOG_ATTR, {"bits": bits, "base": base, "per_channel": per_channel})
        return self

    def _fake(self, w):
        info = getattr(self, LOG_ATTR)
        qmax = 2 ** (info["bits"] - 1) - 1
        base = info["base"]
        a = paddle.abs(w)
        s = paddle.max(a, axis=0, keepdim=True) if info["per_channel"] else paddle.max(a)
        s = paddle.clip(s, min=float(np.finfo(np.float32).eps))
        k = -paddle.log(paddle.clip(a, min=1e-30) / s) / math.log(base)
        under = (k > qmax + 0.5) | (a == 0)
        q = paddle.clip(paddle.round(k), 0, qmax)
        wq = paddle.where(under, paddle.zeros_like(w), paddle.sign(w) * s * paddle.pow(paddle.full_like(w, base), -q))
        return w + (wq - w).detach()  # straight-through estimator

    def forward(self, x):
        return paddle.nn.functional.linear(x, self._fake(self.weight), self.bias)

    def log_codes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(q, sign, scale) in the neutral [out, in] layout, computed with the same Paddle ops."""
        info = getattr(self, LOG_ATTR)
        w = self.weight.detach()
        qmax = 2 ** (info["bits"] - 1) - 1
        a = paddle.abs(w)
        s = paddle.clip(paddle.max(a, axis=0, keepdim=True) if info["per_channel"] else paddle.max(a),
                        min=float(np.finfo(np.float32).eps))
        k = -paddle.log(paddle.clip(a, min=1e-30) / s) / math.log(info["base"])
        under = ((k > qmax + 0.5) | (a == 0)).numpy()
        q = np.where(under, qmax, np.clip(np.rint(k.numpy()), 0, qmax)).astype(np.int64)
        sign = np.where(under, 0, np.sign(w.numpy())).astype(np.int8)
        return q.T, sign.T, s.numpy().astype(np.float64).reshape(-1)


def _swap(model: Any, name: str, new: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model if not parent_name else dict(model.named_sublayers())[parent_name]
    setattr(parent, child, new)


def _log_quantize(model: Any, spec: QuantizationSpec, data: Optional[TaskData], ctx: StageContext) -> Any:
    for name, (layer, s) in selected(model, spec, ctx.plan).items():
        new = LogQuantLinear(layer.weight.shape[0], layer.weight.shape[1])
        new.weight.set_value(layer.weight.numpy())
        new.bias.set_value(layer.bias.numpy())
        new.setup(s["bits"], spec.log_base, s["granularity"] is QuantGranularity.per_channel)
        _swap(model, name, new)
    if spec.mode is QuantMode.qat:
        train(model, data, spec.training, ctx)
    model.eval()
    return model
