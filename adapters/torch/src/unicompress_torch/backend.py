"""TorchAdapter: the `torch` backend. Imports no framework at module level.

Every method imports its framework module (layers, pruning, ...) on first use, so
`unicompress backends` can list this backend's capabilities on a machine without torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from unicompress.backend.adapter import Adapter
from unicompress.backend.capabilities import Capabilities
from unicompress.errors import Problem
from unicompress.backend.types import Inputs, LayerInfo, LayerStats
from unicompress.specs import DistillationSpec, FineTuneSpec, LowRankSpec, PruningSpec, QuantizationSpec

from .capabilities import torch_capabilities


class TorchAdapter(Adapter):
    """PyTorch backend: torch.nn.utils.prune, torchao, torch.onnx, HF transformers models.

    Example: ``get_backend("torch").apply(model, PruningSpec(sparsity=0.5))``.
    """

    name = "torch"
    requirements = ("torch==2.13.0", "torchao==0.18.0")
    framework_modules = ("torch", "transformers")
    zoo_models = ("tiny-bert", "tiny-vit", "minilm-l6", "user-encoder")  # user-encoder: an HF MPNet (models.py)

    package = "unicompress_torch"
    import_first = ("torch",)
    handler_table = {PruningSpec: ("pruning", "apply_pruning"), LowRankSpec: ("lowrank", "apply_low_rank"),
                     FineTuneSpec: ("training", "apply_finetune"),
                     QuantizationSpec: ("quantization", "apply_quantization"),
                     DistillationSpec: ("distillation", "apply_distillation")}
    answers = {"structure": ("layers", "structure"), "set_weights": ("layers", "set_weights"),
               "quantized_weights": ("quantization", "quantized_weights"), "export_native": ("export", "export_native"),
               "neutral_weights": ("models", "neutral_weights"), "build_model": ("models", "build_model")}

    # ---- pure data ----------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        return torch_capabilities()

    def weight_kinds_for(self, spec: Any) -> frozenset[str]:
        """The packed Q/K/V of nn.MultiheadAttention is pruned in place, but no torch quantization path can store
        it (its forward reads ``in_proj_weight`` as a tensor): the planner refuses it for quantization up front."""
        return frozenset({"linear"}) if isinstance(spec, QuantizationSpec) else self.weight_kinds

    def refusals(self, spec: Any) -> list[Problem]:
        """Value pairs the torch toolkits cannot do together (the table judges values one by one)."""
        out = []
        if isinstance(spec, QuantizationSpec):
            if spec.calibration.method.value != "minmax" and spec.mode.value != "static":
                out.append(Problem("calibration.method", spec.calibration.method.value,
                                   f"torch uses min-max ranges in mode {spec.mode.value!r}; other methods "
                                   "need mode 'static'"))
        training = getattr(spec, "training", None)
        if training is not None and training.distributed.value != "none" and not isinstance(spec, FineTuneSpec):
            out.append(Problem("training.distributed", training.distributed.value,
                               f"torch trains {spec.technique} in one process; data_parallel is supported "
                               "by technique 'finetune'"))
        return out

    # ---- plumbing ------------------------------------------------------------------------------
    def layers(self, model: Any) -> list[LayerInfo]:
        return [r.info() for r in self.module("layers").discover(model)]

    def weights(self, model: Any, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        quant = self._quantization()
        if quant is not None and quant.is_quantized(model):  # quantized layers are no nn.Linear any more
            return quant.dequantized_weights(model, list(names) if names is not None else None)
        return self.module("layers").weights(model, names)

    def run(self, model: Any, inputs: Inputs) -> np.ndarray:
        torch, = self.require("torch")
        training = self.module("training")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits = training.forward_logits(model, training.to_torch_inputs(inputs))
        finally:
            model.train(was_training)
        return logits.detach().float().cpu().numpy().astype(np.float32)

    def describe(self, model: Any) -> list[LayerStats]:
        quant = self._quantization()
        if quant is not None and hasattr(quant, "describe") and quant.is_quantized(model):
            return quant.describe(model)
        return self.module("layers").describe(model)

    def _quantization(self) -> Any:
        try:
            return self.module("quantization")
        except ImportError:
            return None

    # ---- export ---------------------------------------------------------------------------------
    def export_onnx(self, model: Any, path: Path, example: Inputs, opset: int = 17) -> Path:
        quant = self._quantization()
        if quant is not None and quant.is_quantized(model):
            return quant.export_onnx(model, path, example, opset)
        return self.module("export").export_onnx(model, path, example, opset)

