"""PaddleAdapter: the unicompress backend for paddle.nn.Layer models (entry point `paddle`).

This module imports no framework: `unicompress backends` lists the capabilities without Paddle.
Framework modules load on first use through `Adapter.module()`, which first checks the import order
(TensorFlow before Paddle in one process segfaults; we raise ImportOrderError instead).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from unicompress.backend.adapter import Adapter
from unicompress.backend.capabilities import Capabilities
from unicompress.backend.types import Inputs, LayerInfo, LayerStats, QuantizedTensor, TransformerStructure
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


    def capabilities(self) -> Capabilities:
        return paddle_capabilities()

    def copy(self, model: Any) -> Any:
        return copy.deepcopy(model)

    def layers(self, model: Any) -> list[LayerInfo]:
        return self.module("layers").layer_infos(model)

    def structure(self, model: Any) -> Optional[TransformerStructure]:
        return self.module("layers").structure(model)

    def weights(self, model: Any, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        return self.module("layers").weights(model, names)

    def set_weights(self, model: Any, weights: dict[str, np.ndarray]) -> None:
        self.module("layers").set_weights(model, weights)

    def quantized_weights(self, model: Any) -> dict[str, QuantizedTensor]:
        return self.module("quantization").quantized_weights(model)

    def run(self, model: Any, inputs: Inputs) -> np.ndarray:
        return self.module("layers").run(model, inputs)

    def describe(self, model: Any) -> list[LayerStats]:
        return self.module("layers").describe(model)

    def export_onnx(self, model: Any, path: Path, example: Inputs, opset: int = 17) -> Path:
        return self.module("export").export_onnx(model, Path(path), example, opset)

    def export_native(self, model: Any, directory: Path) -> Path:
        return self.module("export").export_native(model, Path(directory))

    def neutral_weights(self, model: Any) -> dict[str, np.ndarray]:
        return self.module("models").neutral_weights(model)

    def build_model(self, zoo: str, **kwargs: Any) -> Any:
        return self.module("models").build_model(zoo, **kwargs)
