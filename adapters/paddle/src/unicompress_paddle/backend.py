"""PaddleAdapter: the unicompress backend for paddle.nn.Layer models (entry point `paddle`).

This module imports no framework: `unicompress backends` lists the capabilities without Paddle.
Framework modules load on first use through `Adapter.module()`, which first checks the import order
(TensorFlow before Paddle in one process segfaults; we raise ImportOrderError instead).
"""
from __future__ import annotations

from unicompress.backend.adapter import Adapter
from unicompress.backend.capabilities import Capabilities
from unicompress.specs import DistillationSpec, FineTuneSpec, LowRankSpec, PruningSpec, QuantizationSpec

from .capabilities import paddle_capabilities


class PaddleAdapter(Adapter):
    """Translate unicompress specs into PaddleSlim / paddle.quantization / paddle2onnx calls."""

    name = "paddle"
    requirements = ("unicompress-paddle", "paddlepaddle==3.3.1", "paddleslim==2.6.0", "paddle2onnx==2.1.0",
                    "setuptools<81", "decorator")
    framework_modules = ("paddle",)
    weight_kinds = frozenset({"linear"})  # Linear weights (Embeddings are neither pruned nor quantized here)
    zoo_models = ("tiny-bert", "tiny-vit", "minilm-l6", "user-encoder")  # user-encoder: models.UserEncoderClassifier

    package = "unicompress_paddle"
    import_conflicts = (("tensorflow", "paddle"),)  # TensorFlow loaded before Paddle: Paddle's core segfaults
    import_first = ("unicompress_paddle.compat",)  # paddle itself, PaddleSlim's import warnings silenced
    handler_table = {PruningSpec: ("pruning", "prune"), QuantizationSpec: ("quantization", "quantize"),
                     DistillationSpec: ("distillation", "distill"), LowRankSpec: ("lowrank", "factorize"),
                     FineTuneSpec: ("training", "finetune")}

    answers = {"layers": ("layers", "layer_infos"), "structure": ("layers", "structure"),
               "weights": ("layers", "weights"), "set_weights": ("layers", "set_weights"), "run": ("layers", "run"),
               "describe": ("layers", "describe"), "quantized_weights": ("quantization", "quantized_weights"),
               "export_onnx": ("export", "export_onnx"), "export_native": ("export", "export_native"),
               "neutral_weights": ("models", "neutral_weights"), "build_model": ("models", "build_model")}

    def capabilities(self) -> Capabilities:
        return paddle_capabilities()
