"""int8 on the planned layers with `onnxruntime.quantization`: `quantize_dynamic` (MatMulInteger), `quantize_static`
(QDQ, a CalibrationDataReader over `TaskData.calibration`, MinMax or Percentile), or weight-only (integers behind
a DequantizeLinear, qparams from ORT's `quant_utils`, float activations).

Weights: symmetric -> int8 in [-127, 127] (ORT's symmetric range), asymmetric -> uint8 in [0, 255]; per channel =
per output column of the [in, out] initializer. `nodes_to_quantize` names exactly the planned layers' nodes (a
Gemm also as the ``<name>_MatMul`` quantize_dynamic turns it into: microsoft/onnxruntime#19503); the result
is checked against the plan.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)
from onnxruntime.quantization.quant_utils import compute_data_quant_params, quantize_onnx_initializer

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import QuantizationSpec
from unicompress.specs.quantization import QuantGranularity, QuantMode, Scheme

from . import layers as L
from .runtime import serialized


class TaskDataReader(CalibrationDataReader):
    """Feeds the first `limit` calibration batches, cast to the graph's declared input types."""

    def __init__(self, model: Any, data: Optional[TaskData], limit: int):
        batches = data.calibration_batches(limit) if data is not None else []
        if not batches:
            raise ValueError("static quantization calibrates activation ranges: give TaskData with calibration "
                             "(or train) batches")
        consts = {t.name for t in model.graph.initializer}
        wanted = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
                  for i in model.graph.input if i.name not in consts}
        self._feeds = iter([{k: np.asarray(x[k] if isinstance(x, dict) else x, dtype=t) for k, t in wanted.items()}
                            for x in batches])

    def get_next(self) -> Optional[dict]:
        return next(self._feeds, None)


def apply_quantization(model: Any, spec: QuantizationSpec, data: Optional[TaskData], ctx: StageContext) -> Any:
    """QuantizationSpec handler: int8 on exactly `ctx.plan.selected`; returns the quantized ModelProto."""
    planned = set(ctx.plan.selected)
    if not planned:
        return model
    chosen = [la for la in L.canonicalize(model) if la.name in planned]
    done = [la.name for la in chosen if la.scale is not None]
    if done:
        raise ValueError(f"layers {done[:3]} are already quantized: quantize the float model once")
    if spec.mode is QuantMode.weight_only:
        out = _weight_only(model, spec, chosen)
    else:
        out = _with_ort(model, spec, data, chosen)
    got = {la.name for la in L.discover(out) if la.scale is not None}
    if got != planned:
        raise RuntimeError(f"onnxruntime quantized {sorted(got - planned)[:3]} beyond the plan and left "
                           f"{sorted(planned - got)[:3]} float")
    return out


def _with_ort(model: Any, spec: QuantizationSpec, data: Optional[TaskData], chosen: list) -> Any:
    symmetric = spec.scheme is Scheme.symmetric
    common = dict(per_channel=spec.granularity is QuantGranularity.per_channel, reduce_range=False,
                  weight_type=QuantType.QInt8 if symmetric else QuantType.QUInt8)
    extra = {"WeightSymmetric": symmetric}
    nodes = [la.node.name for la in chosen]
    with tempfile.TemporaryDirectory(prefix="uc-onnx-") as tmp:
        src, out = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(serialized(model))
        if spec.mode is QuantMode.dynamic:
            nodes += [f"{la.node.name}_MatMul" for la in chosen if la.node.op_type == "Gemm"]
            quantize_dynamic(src, out, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                             extra_options=extra, **common)
        else:
            percentile = spec.calibration.method.value == "percentile"
            extra.update(ActivationSymmetric=spec.activation_scheme is Scheme.symmetric,
                         # keep ORT from rescaling a Gemm's weight to fit its int32 bias: scales stay min-max
                         QDQDisableWeightAdjustForInt32Bias=True,
                         **({"CalibPercentile": spec.calibration.percentile} if percentile else {}))
            quantize_static(src, out, TaskDataReader(model, data, spec.calibration.num_batches),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm"],
                            nodes_to_quantize=nodes, extra_options=extra,
                            activation_type=QuantType.QInt8 if extra["ActivationSymmetric"] else QuantType.QUInt8,
                            calibrate_method=CalibrationMethod.Percentile if percentile else CalibrationMethod.MinMax,
                            **common)
        return onnx.load(str(out))


def _weight_only(model: Any, spec: QuantizationSpec, chosen: list) -> Any:
    """Integers behind a DequantizeLinear per planned weight (ORT's QDQ naming: <w>_quantized/_scale/_zero_point)."""
    if _opset(model) < 13:
        raise ValueError(f"per-axis DequantizeLinear needs opset >= 13; the model has {_opset(model)}")
    symmetric = spec.scheme is Scheme.symmetric
    qtype = onnx.TensorProto.INT8 if symmetric else onnx.TensorProto.UINT8
    per_channel = spec.granularity is QuantGranularity.per_channel
    for la in chosen:
        tensor = next(t for t in model.graph.initializer if t.name == la.source)
        w = onnx.numpy_helper.to_array(tensor).astype(np.float32)
        axis = 1 if la.transposed else 0  # the output channel in the initializer's layout
        if per_channel:
            params = [compute_data_quant_params(w.take(i, axis).reshape(-1), qtype, symmetric)
                      for i in range(w.shape[axis])]
            zp, scale = np.stack([p[0] for p in params]), np.stack([p[1] for p in params]).astype(np.float32)
        else:
            zp, scale = compute_data_quant_params(w.reshape(-1), qtype, symmetric)
            scale = np.asarray(scale, np.float32)
        q = quantize_onnx_initializer(tensor, qtype, zp, scale, axis if per_channel else None, la.source + "_quantized")
        base = la.source
        model.graph.initializer.extend([q, onnx.numpy_helper.from_array(scale, base + "_scale"),
                                        onnx.numpy_helper.from_array(np.asarray(zp), base + "_zero_point")])
        dq = onnx.helper.make_node("DequantizeLinear", [q.name, base + "_scale", base + "_zero_point"],
                                   [base + "_DequantizeLinear_Output"], name=f"{la.node.name}_DequantizeLinear",
                                   **({"axis": axis} if per_channel else {}))
        la.node.input[1] = dq.output[0]
        L.insert_before(model, la.node, dq)
        L.drop_if_unused(model, base)
    return model


def _opset(model: Any) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
