"""Capability rows of quantization and distillation in the torch backend (pure data: imports no framework).

Each row: (technique, field, values, Support), consumed by `unicompress.backend.build_table`; keys are what
`QuantizationSpec.capability_items()` / `DistillationSpec.capability_items()` yield. Every row is exercised by
adapters/torch/tests/test_torch_quantization.py and test_torch_distillation.py.
"""
from __future__ import annotations

from unicompress.backend.capabilities import Support

QUANTIZATION_ROWS = [
    # dynamic: torch.ao quantize_dynamic (fbgemm); static: torchao PT2E prepare/convert with
    # X86InductorQuantizer; qat: torchao prepare_qat_pt2e; weight_only: torchao IntxUnpackedToInt8Tensor
    ("quantization", "mode", ["dynamic", "static", "qat", "weight_only"], Support.native),
    # observers/torchao qparams take quant_min/quant_max, so any width up to 8 fits the int8 container
    ("quantization", "bits", [2, 3, 4, 5, 6, 7, 8], Support.native),
    ("quantization", "activation_bits", [8], Support.native),
    ("quantization", "scheme", ["symmetric", "asymmetric"], Support.native),
    ("quantization", "granularity", ["per_tensor", "per_channel"], Support.native),
    ("quantization", "mapping", ["linear"], Support.native),
    # no torch toolkit has log quantization: a parametrization holding codes, signs and scales
    ("quantization", "mapping", ["log"], Support.emulated),
    # MinMaxObserver, HistogramObserver (L2-minimising range: MSE), a MinMaxObserver subclass for percentiles
    ("quantization", "calibration.method", ["minmax", "mse", "percentile"], Support.native),
    # per-module qconfigs: quantize_dynamic's qconfig dict, X86InductorQuantizer.set_module_name_qconfig
    ("quantization", "overrides", [True], Support.native),
]

DISTILLATION_ROWS = [
    # torch has no distillation toolkit: the losses are torch ops trained by the shared train loop
    ("distillation", "kinds", ["response", "feature", "relation"], Support.emulated),
    ("distillation", "feature_loss", ["mse", "cosine"], Support.emulated),
    ("distillation", "student", ["drop_layers"], Support.emulated),
]

NOTES = {
    "quantization": (
        "dynamic: torch.ao.quantization.quantize_dynamic (deprecated in torch 2.13, still the fbgemm int8 "
        "path, run with reduce_range=False so activations use 8 bits); static/qat: torchao PT2E (torch.export + "
        "X86InductorQuantizer; layers with asymmetric weights, which it refuses, are annotated by a small PT2E "
        "Quantizer of ours composed with it); weight_only: torchao IntxUnpackedToInt8Tensor with qparams from "
        "torchao choose_qparams_affine over the spec's integer range (int2..int8 held in int8, dequantized for "
        "the matmul). Static: calibration.method sets activation observers (MinMaxObserver, a percentile "
        "MinMaxObserver subclass, HistogramObserver for mse) and clips weights the reference's way; other modes "
        "use min-max. QAT weights are observed with averaging_constant 1 plus one pass after training, so "
        "scales fit the final weights. Activations: 8 bits, asymmetric uint8 by default. "
        "Integers use the reference ranges (symmetric narrow [-(2^(b-1)-1), 2^(b-1)-1]); asymmetric weights are "
        "stored signed by torch and reported shifted to [0, 2^b-1]. mapping 'log' (weight_only or qat) is "
        "emulated by a parametrization; its ONNX export holds the dequantized float weights. "
        "ONNX: the float twin is exported with the TorchScript exporter and rewritten with torch's own integers "
        "and qparams as QDQ (static/qat/weight_only) or DynamicQuantizeLinear+MatMulInteger (dynamic); ORT fuses "
        "weight-only DQ+MatMul into MatMulNBits, which quantizes activations at its default accuracy level 4 "
        "(session.qdq_matmulnbits_accuracy_level=1 keeps them float)."),
    "distillation": (
        "response KL (T^2-scaled), feature MSE/cosine with learned Linear projections, MiniLM relation "
        "(attention + value relation KL, equal head counts) via forward hooks on encoder.layer blocks; "
        "student by keeping teacher layers (HF BERT, zoo ViT, nn.TransformerEncoder)."),
}
