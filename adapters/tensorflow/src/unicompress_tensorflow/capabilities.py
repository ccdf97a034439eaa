"""The TensorFlow backend's capability table (pure data; no framework import).

Every claimed value is exercised by adapters/tensorflow/tests. Values are per field, not per
combination: combinations the toolkit cannot do (e.g. 4-bit in the TFLite modes) are refused at
apply time with a QuantizationNotSupportedError / PruningNotSupportedError naming the fix.
"""
from __future__ import annotations

from typing import Any

from unicompress.backend.capabilities import Capabilities, Support, build_table
from unicompress.errors import Problem

N, E = Support.native, Support.emulated


def tensorflow_capabilities() -> Capabilities:
    """What the TensorFlow backend honours, and whether TFMOT/TFLite does it (native) or we do (emulated)."""
    rows = [
        ("pruning", "granularity", ["unstructured", "n_m", "block"], N),
        ("pruning", "granularity", ["neuron", "head"], E),
        ("pruning", "criterion", ["magnitude"], N),
        ("pruning", "scope", ["per_layer"], N),
        ("pruning", "schedule.kind", ["one_shot", "polynomial"], N),
        ("pruning", "norm", ["l1", "l2"], E),
        ("pruning", "remove_pruned", [True], E),
        ("quantization", "mode", ["static", "qat", "weight_only", "dynamic"], N),
        ("quantization", "bits", [2, 3, 4, 5, 6, 7, 8], N),
        ("quantization", "activation_bits", [8], N),
        ("quantization", "scheme", ["symmetric", "asymmetric"], N),
        ("quantization", "mapping", ["linear"], N),
        ("quantization", "mapping", ["log"], E),
        ("quantization", "granularity", ["per_tensor", "per_channel"], N),
        ("quantization", "calibration.method", ["minmax"], N),
        ("quantization", "overrides", [True], N),
        ("distillation", "kinds", ["response", "feature", "relation"], E),
        ("distillation", "feature_loss", ["mse", "cosine"], E),
        ("distillation", "student", ["drop_layers"], E),
        ("low_rank", "by", ["rank", "energy"], E),
        ("finetune", "training.distributed", ["none", "data_parallel"], N),
    ]
    notes = {
        "pruning": "tfmot.sparsity.keras.prune_low_magnitude on the planned Dense layers (ConstantSparsity / "
                   "PolynomialDecay with the spec's frequency, sparsity_m_by_n=(n, m) for N:M, block_size for "
                   "blocks), and unstructured on keras MultiHeadAttention (the MHA wrapped, get_prunable_weights "
                   "narrowed to the planned Q/K/V/O EinsumDense kernels); the wrappers are stripped as "
                   "strip_pruning does. One-shot = each wrapper's own conditional_mask_update. Blocks are scored "
                   "natively by AVG pooling of |w| (= L1 norm for full blocks; edge blocks are averaged over their "
                   "valid part). Emulated with TF ops: N:M and blocks on EinsumDense kernels (TFMOT's N:M and block "
                   "code takes rank-2 weights only), the L2 block norm, neuron and head pruning (masks, and with "
                   "remove_pruned a rebuild: narrower Dense, fewer MultiHeadAttention / attention heads with the "
                   "kept heads' kernels). Each selected layer's achieved sparsity is checked. No global scope and "
                   "no movement/L0/L1 criteria in TFMOT. Functional/Sequential models only (Keras 3 ones are rebuilt "
                   "as tf_keras first).",
        "quantization": "Exactly the planned layers (selected minus skip overrides, each with the plan's settings). "
                        "keras MultiHeadAttention projections through our MultiHeadAttentionQuantizeConfig (TFMOT has "
                        "none): their EinsumDense kernels quantized per output unit like Dense kernels, and in static/"
                        "qat a fake-quant on each projection's input (the attention context before O included). "
                        "qat and weight_only: TFMOT quantize_annotate_layer + quantize_apply with our "
                        "QuantizeConfigs (LastValueQuantizer per-axis/per-tensor, symmetric/asymmetric, 2-8 bits, "
                        "narrow range; MovingAverageQuantizer for activations; LayerNormalization outputs in qat); "
                        "overrides give per-layer configs. static: the same weight configs, plus a TFMOT "
                        "QuantizeLayer(AllValuesQuantizer) on the input of each selected Dense only (inserted by a "
                        "TFMOT layout transform in quantize_apply), calibrated by TFMOT from training-mode passes "
                        "over the calibration batches (min/max; no optimizer step); softmax, LayerNorm, GELU and the "
                        "residuals stay float. Its ONNX export is QDQ around the selected MatMuls only (ORT fuses "
                        "them into integer MatMuls). Its native export, for 8-bit symmetric weights and asymmetric "
                        "activations, is TFLite's own int8 model: the float model calibrated by the TFLite "
                        "converter (representative_dataset = the calibration batches, _experimental_calibrate_only) "
                        "and quantized by convert.mlir_quantize with every op but FULLY_CONNECTED denylisted and "
                        "the unselected FULLY_CONNECTED ops denylisted by name (integer kernels for the selected "
                        "Dense layers only); other static specs export TFMOT's fake-quant as QUANTIZE/DEQUANTIZE "
                        "ops. dynamic: the TFLite dynamic-range converter (int8 symmetric "
                        "narrow-range weights, per-channel or per-tensor via "
                        "_experimental_disable_per_channel_quantization_for_dense_layers; activations quantized at "
                        "run time by the hybrid kernels). The converter has no layer selection (it quantizes every "
                        "constant of >= 1024 elements, embedding tables and the pooler included), so its flatbuffer "
                        "is edited with TensorFlow's flatbuffer_utils: every quantized constant outside the selected "
                        "Dense kernels gets its original float32 weights back (the ops then run as float kernels). "
                        "Selected Dense layers under 1024 weights, and overrides other than skip, are refused. Its "
                        "ONNX export is tf2onnx.from_tflite (int8 weights + DequantizeLinear, DynamicQuantizeLinear "
                        "on the inputs), its native export the flatbuffer. Log mapping is an "
                        "emulated fake-quant quantizer (weight_only/qat); its ONNX export holds the levels as float "
                        "constants (ONNX has no log quantization).",
        "distillation": "A GradientTape loop with a frozen teacher; TFMOT has no distillation.",
        "low_rank": "tf.linalg.svd, each Dense replaced by two Dense layers (<name>.0, <name>.1).",
        "finetune": "A compiled GradientTape step (tf.function); weights that are exactly zero stay zero. "
                    "data_parallel: tf.distribute.MultiWorkerMirroredStrategy from TF_CONFIG (one process per "
                    "worker); each worker trains on its rows of the global batch and the strategy all-reduces "
                    "the gradients, for every stage that trains (finetune, gradual pruning, QAT, distillation); "
                    "QAT ranges are merged (min/max over workers) every step.",
    }
    return Capabilities("tensorflow", build_table(rows), notes)


def dynamic_range_refusals(spec: Any) -> list[Problem]:
    """What the TFLite dynamic-range converter cannot do although each value is claimed (mode dynamic only)."""
    if getattr(spec, "technique", None) != "quantization" or spec.mode.value != "dynamic":
        return []
    out = []
    if spec.bits != 8:
        out.append(Problem("bits", spec.bits, "the TFLite dynamic-range converter quantizes to 8 bits only"))
    if spec.activation_bits != 8:
        out.append(Problem("activation_bits", spec.activation_bits, "TFLite hybrid kernels quantize inputs to 8 bits"))
    if spec.scheme.value != "symmetric":
        out.append(Problem("scheme", spec.scheme.value, "TFLite dynamic-range int8 weights are symmetric"))
    if not spec.narrow_range:
        out.append(Problem("narrow_range", False, "TFLite int8 weights use the narrow range [-127, 127]"))
    for o in spec.overrides:
        if (o.bits not in (None, 8) or o.scheme not in (None, spec.scheme)
                or o.granularity not in (None, spec.granularity)) and not o.skip:
            out.append(Problem("overrides", o.pattern, "the TFLite converter has no per-layer bits/scheme/granularity "
                                                       "(skip works; else use mode static, qat or weight_only)"))
    return out
