"""QuantizationSpec handler of the torch adapter: each mode is done by the native toolkit.

- ``dynamic``: `torch.ao.quantization.quantize_dynamic`; ``weight_only``: torchao `IntxUnpackedToInt8Tensor`
  (`quantization_dynamic`);
- ``static`` / ``qat``: torchao PT2E (`quantization_pt2e`, observers in `quantization_observers`);
- ``mapping: log``: emulated with a parametrization (`quantization_log`).

Per-layer overrides become per-module qconfigs (dynamic, PT2E `set_module_name_qconfig`) or per-module
settings (weight-only, log), under the core's override rule (`quantization_records.plan_layers`). Integer
ranges follow the reference (`unicompress.reference.quantization`): symmetric narrow
``[-(2^(b-1)-1), 2^(b-1)-1]``; asymmetric weights are stored by torch as signed ``[-2^(b-1), 2^(b-1)-1]`` and
reported shifted by ``2^(b-1)`` (the same real values) so that `quantized_weights` speaks the reference
convention ``[0, 2^b-1]``.

ONNX: `export_onnx` exports the float twin of the quantized model (weights = the dequantized integers the
toolkit produced) with the adapter's one float exporter (`export.export_onnx`), then the core's QDQ
rewriter (`unicompress.onnx.qdq`) puts back the integers: static/QAT QuantizeLinear/DequantizeLinear on the
activation with the calibrated torch qparams and int weight + DequantizeLinear, MatMulInteger with
DynamicQuantizeLinear (dynamic), or the weight DequantizeLinear (weight-only). Layers are found in the
graph by value, so the integers and scales in the file are exactly the ones torch computed.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import Inputs, LayerStats, QuantizedTensor, TaskData, count_nonzero
from unicompress.fileio import atomic_path
from unicompress.specs import CalibrationMethod, Mapping, QuantizationSpec, QuantMode

from . import layers as _layers
from .planning import stage_plan
from .quantization_dynamic import FullRangeDynamicLinear, apply_dynamic, apply_weight_only, dynamic_raw, \
    weight_only_raw
from .quantization_log import LogQuantWeight, apply_log, log_raw
from .quantization_observers import observer_class
from .quantization_pt2e import PT2EQuantizedModel, apply_pt2e, pt2e_weights
from .quantization_records import RECORD_ATTR, LayerQuant, QuantRecord, is_quantized, plan_layers, quant_record


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
        return apply_log(model, spec, plan, data, ctx)
    if spec.mode is QuantMode.dynamic:
        return apply_dynamic(model, spec, plan)
    if spec.mode is QuantMode.weight_only:
        return apply_weight_only(model, spec, plan)
    return apply_pt2e(model, spec, plan, data, ctx)


def quantized_weights(model: nn.Module) -> dict[str, QuantizedTensor]:
    """{layer name: QuantizedTensor} read back from the native quantized objects.

    Integers are in the neutral [out, in] layout, per-channel parameters along axis 0, and in the
    reference convention (asymmetric: ``[0, 2^b-1]``). Example: ``quantized_weights(q)["...query"].q``.
    """
    if not is_quantized(model):
        return {}
    rec = quant_record(model)
    if rec.mapping == "log":
        raw = log_raw(model)
    elif rec.mode == "dynamic":
        raw = dynamic_raw(model)
    elif rec.mode == "weight_only":
        raw = weight_only_raw(model)
    else:
        raw = {name: (q, s, z) for name, (q, s, z, _) in pt2e_weights(model.graph).items()}
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


def qdq_layers(model: nn.Module, twin: nn.Module, proto: Any) -> dict[str, Any]:
    """{layer: unicompress.onnx.qdq.QDQLayer} for the quantized layers of `model`, located by value in `proto`
    (the ONNX export of its float `twin`): TorchScript scope names lose module names when a parent calls a
    grandchild directly, values do not. Static/QAT layers carry the calibrated torch activation qparams."""
    from unicompress.onnx.qdq import ActivationQuant, QDQLayer, match_weights

    rec = quant_record(model)
    qw = quantized_weights(model)
    refs = match_weights(proto, {n: twin.get_submodule(n).weight.detach().numpy() for n in qw})
    missing = sorted(set(qw) - set(refs))
    if missing:
        raise ValueError(f"quantized layers not found in the exported ONNX graph: {missing[:4]}")
    acts = ({n: a for n, (_, _, _, a) in pt2e_weights(model.graph).items()}
            if isinstance(model, PT2EQuantizedModel) else {})
    out = {}
    for name, t in qw.items():
        activation = None
        if rec.mode in ("static", "qat"):
            if acts.get(name) is None:
                raise ValueError(f"{name}: the PT2E graph has no activation quantization for this layer")
            scale, zp, dtype = acts[name]
            activation = ActivationQuant(scale, zp, signed=dtype != torch.uint8)
        out[name] = QDQLayer(t, refs[name], activation, dynamic=rec.mode == "dynamic")
    return out


def export_onnx(model: nn.Module, path: Path, example: Inputs, opset: int = 17) -> Path:
    """Write a quantized model as ONNX: QDQ (static/qat/weight-only) or integer ops (dynamic).

    The integer weights, scales and zero-points (and the activation qparams of static/QAT) written into
    the file are the ones the torch toolkit computed. Log-quantized weights have no ONNX operator and
    are written as their dequantized float values.

    Example: ``export_onnx(qmodel, "model.onnx", {"input_ids": ids, "attention_mask": mask})``.
    """
    import onnx

    from unicompress.onnx.qdq import insert_qdq

    from .export import export_onnx as export_float

    path = Path(path)
    rec = quant_record(model)
    twin = dequantized_model(model)
    with atomic_path(path) as tmp:
        # constant folding stores each Linear weight as one [in, out] initializer the rewriter can replace
        export_float(twin, tmp, example, opset, constant_folding=True)
        if rec.mapping != "log":
            proto = onnx.load(str(tmp))
            insert_qdq(proto, qdq_layers(model, twin, proto))
            onnx.save(proto, str(tmp))
    return path


__all__ = ["apply_quantization", "quantized_weights", "is_quantized", "quant_record", "export_onnx", "qdq_layers",
           "dequantized_model", "PT2EQuantizedModel", "FullRangeDynamicLinear", "LogQuantWeight", "LayerQuant",
           "QuantRecord", "plan_layers", "observer_class", "describe", "dequantized_weights", "RECORD_ATTR"]
