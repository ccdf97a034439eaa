"""Static and QAT quantization through torchao PT2E: `torch.export` -> `prepare_pt2e` (or `prepare_qat_pt2e`)
with `X86InductorQuantizer` (+ `linear_quantizer` for asymmetric weights) -> calibration or training ->
`convert_pt2e`. Activation observers: min-max, percentile (`quantization_observers`), MSE (`HistogramObserver`,
which minimises the L2 quantization error); weights are clipped by the same method or min-max. The
module-name filter of the quantizer keeps unselected layers (pooler, head, skipped) in float.
`pt2e_weights` reads the integer weights and the calibrated activation qparams back from the converted graph.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import CalibrationMethod, QuantizationSpec, QuantMode, Scheme

from .quantization_observers import observer_class
from .quantization_records import RECORD_ATTR, LayerQuant, QuantRecord, activation_range
from .training import to_torch_inputs, train_loop


def pt2e_config(lq: LayerQuant, spec: QuantizationSpec, is_qat: bool):
    """The torchao QuantizationConfig of one layer: activation observer by calibration method, weight grid."""
    from torchao.quantization.pt2e import (FusedMovingAvgObsFakeQuantize, HistogramObserver, MinMaxObserver,
                                           MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
                                           PerChannelMinMaxObserver)
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec as QSpec

    eps = {"eps": float(torch.finfo(torch.float32).eps)}
    amin, amax_, adtype = activation_range(spec)
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


def export_graph(model: nn.Module, example: dict[str, torch.Tensor], training: bool) -> torch.fx.GraphModule:
    """`torch.export` of the model (named inputs, dynamic batch/sequence) as the GraphModule PT2E prepares."""
    # the model itself is exported (named inputs as keywords) so nn_module_stack carries its own module names
    model.train(training)
    ep = torch.export.export(model, (), dict(example), dynamic_shapes=_dynamic_shapes(example), strict=False)
    return ep.module()


def apply_pt2e(model: nn.Module, spec: QuantizationSpec, plan: dict[str, LayerQuant], data: Optional[TaskData],
                ctx: StageContext) -> nn.Module:
    """Static (calibrate) or QAT (train) PT2E quantization of the planned layers -> `PT2EQuantizedModel`."""
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
            x86.set_module_name_qconfig(name, pt2e_config(lq, spec, is_qat))
        else:  # X86InductorQuantizer's get_weight_qspec refuses affine weight qschemes
            asymmetric[name] = pt2e_config(lq, spec, is_qat)
    quantizer = ComposableQuantizer([x86, linear_quantizer(asymmetric)]) if asymmetric else x86
    graph = export_graph(model, batches[0], training=is_qat)
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
    found = set(pt2e_weights(converted))
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


def pt2e_weights(graph: torch.fx.GraphModule) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, Any]]:
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

