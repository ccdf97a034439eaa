"""The onnx backend's capability table (pure data). native: ONNX Runtime's own toolkit (`onnxruntime.quantization`);
emulated: unicompress with numpy on the graph's initializers. Anything else (bits other than 8, log mapping, QAT,
training-time criteria, heads and neurons, distillation, fine-tuning) is not claimed and `OnnxAdapter.apply` refuses it.
"""
from __future__ import annotations

from unicompress.backend.capabilities import Capabilities, Support, build_table

ROWS = [
    # numpy on the weight initializers: ONNX has no pruning toolkit
    ("pruning", "granularity", ["unstructured", "n_m", "block"], Support.emulated),
    # block scores; the l1 norm is computed too, but every case of it also needs heads or neurons: not claimed
    ("pruning", "norm", ["l2"], Support.emulated),
    ("pruning", "criterion", ["magnitude"], Support.emulated),
    ("pruning", "scope", ["per_layer", "global"], Support.emulated),
    ("pruning", "schedule.kind", ["one_shot"], Support.emulated),
    # onnxruntime.quantization: quantize_dynamic (MatMulInteger), quantize_static (QDQ)
    ("quantization", "mode", ["dynamic", "static"], Support.native),
    # DequantizeLinear on the weight initializer, qparams by onnxruntime.quantization.quant_utils
    ("quantization", "mode", ["weight_only"], Support.emulated),
    ("quantization", "bits", [8], Support.native),
    ("quantization", "activation_bits", [8], Support.native),
    ("quantization", "scheme", ["symmetric", "asymmetric"], Support.native),
    ("quantization", "mapping", ["linear"], Support.native),
    ("quantization", "granularity", ["per_tensor", "per_channel"], Support.native),
    ("quantization", "calibration.method", ["minmax", "percentile"], Support.native),
    # numpy SVD, two MatMuls
    ("low_rank", "by", ["rank", "energy"], Support.emulated),
]

NOTES = {
    "pruning": "masks by numpy, written into the MatMul/Gemm initializers (ONNX Runtime runs the zeros dense).",
    "quantization": "dynamic: quantize_dynamic; static: quantize_static, QDQ, calibrated on TaskData.calibration; "
                    "weight_only: DequantizeLinear on int8 weights. Symmetric weights int8 [-127, 127], asymmetric "
                    "uint8; exactly the planned MatMul/Gemm nodes (nodes_to_quantize).",
    "low_rank": "MatMul(x, A [in, r]) then the original node on B: layers '<name>.0' and '<name>.1'.",
}


def onnx_capabilities() -> Capabilities:
    """The onnx backend's table."""
    return Capabilities("onnx", build_table(ROWS), NOTES)
