"""The Paddle backend's capability table: exactly what its tests (and the conformance suite) exercise.

native   = done by PaddleSlim / paddle.quantization / paddle.incubate.asp / paddle2onnx calls
emulated = done by this adapter with Paddle ops (declared in the notes)
"""
from __future__ import annotations

from unicompress.backend.capabilities import Capabilities, Support, build_table

N, E = Support.native, Support.emulated

ROWS = [
    # pruning
    ("pruning", "granularity", ["unstructured", "n_m", "neuron", "head", "block"], N),
    ("pruning", "criterion", ["magnitude"], N),
    ("pruning", "scope", ["per_layer", "global"], N),
    ("pruning", "schedule.kind", ["one_shot", "polynomial"], N),
    ("pruning", "norm", ["l1", "l2"], N),
    ("pruning", "remove_pruned", [True], N),
    # quantization
    ("quantization", "mode", ["static", "qat", "weight_only"], N),
    ("quantization", "bits", list(range(2, 17)), N),
    ("quantization", "activation_bits", [8], N),
    ("quantization", "scheme", ["symmetric"], N),
    ("quantization", "mapping", ["linear"], N),
    ("quantization", "mapping", ["log"], E),
    ("quantization", "granularity", ["per_tensor", "per_channel"], N),
    ("quantization", "calibration.method", ["minmax", "percentile", "mse"], N),
    ("quantization", "overrides", [True], N),
    # distillation: PaddleSlim's KLLoss for the response; feature losses are masked per-token errors (PaddleSlim's
    # MSELoss would average padding in) and relation has no PaddleSlim loss: Paddle ops
    ("distillation", "kinds", ["response"], N),
    ("distillation", "kinds", ["feature", "relation"], E),
    ("distillation", "feature_loss", ["mse", "cosine"], E),
    ("distillation", "student", ["drop_layers"], E),
    # low rank
    ("low_rank", "by", ["rank", "energy"], E),
    # finetune
    ("finetune", "training.distributed", ["none", "data_parallel"], N),
]

NOTES = {
    "pruning": "PaddleSlim UnstructuredPruner (subclassed: Paddle 3 bool-mask fix, exact-k threshold) for "
               "unstructured and block (blocks scored by mean |w| / mean w^2 instead of PaddleSlim's |mean w|); "
               "polynomial schedule: GMPUnstructuredPruner when power 3 and frequency > 10, else the scheduled "
               "ratios fed to UnstructuredPruner.step during training (neuron/head: zeroed, removed at the end); "
               "N:M by "
               "paddle.incubate.asp.prune_model(mask_1d), one-shot only; neuron (FFN pairs) and head scored by "
               "PaddleSlim L1/L2NormFilterPruner.cal_mask and sliced or zeroed by PaddleSlim PruningPlan (its "
               "graph tracer dygraph2program is broken on Paddle 3, so groups come from the TransformerStructure: "
               "discovered from layer types - nn.MultiHeadAttention, nn.TransformerEncoderLayer/DecoderLayer "
               "(self and cross attention, linear1/linear2), the zoo blocks - or declared in the recipe).",
    "quantization": "paddle.quantization PTQ/QAT with PaddleSlim observers/quanters (three fixed for Paddle 3 / "
                    "NumPy 2); symmetric abs-max only (no asymmetric, no dynamic mode); weights q in "
                    "[-(2^(b-1)-1), 2^(b-1)-1] (12-16 bits: Paddle's float32 arithmetic rounds about 0.1% of "
                    "integers one step off the float64 reference at ties, inside the suite's tolerance); 'log' mapping emulated by a log fake-quant Linear (weight_only, qat). "
                    "ONNX: paddle2onnx cannot map int8 quantize_linear, QDQ nodes are re-inserted with Paddle's "
                    "integers and scales.",
    "distillation": "response = PaddleSlim KLLoss; feature mse / cosine (per-token errors over the real tokens, "
                    "averaged over the layer-map pairs) and relation (MiniLM attention + value relations) with "
                    "Paddle ops; frozen teacher; student by dropping "
                    "layers (num_layers keeps evenly spaced layers incl. first and last); equal widths only.",
    "finetune": "data_parallel: paddle.distributed.init_parallel_env (gloo on CPU) + paddle.DataParallel under "
                "`python -m paddle.distributed.launch`; every rank takes rows rank::world_size of the global batch; "
                "QAT activation quanters take the global batch's abs-max (all_reduce MAX inside the forward).",
    "low_rank": "paddle.linalg.svd of each Linear, replaced by Linear(in, r) -> Linear(r, out) ('first'/'second').",
}


def paddle_capabilities() -> Capabilities:
    return Capabilities("paddle", build_table(ROWS), NOTES)
