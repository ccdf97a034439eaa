"""TensorFlowAdapter: the unicompress backend for tf_keras models (TFMOT, TFLite, tf2onnx).

This module imports no framework at module level: `unicompress backends` lists its capabilities
anywhere. Every method imports the framework modules it needs on first use.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from unicompress.backend.adapter import Adapter
from unicompress.backend.capabilities import Capabilities
from unicompress.backend.types import Inputs, LayerInfo, LayerStats, QuantizedTensor, TransformerStructure
from unicompress.errors import Problem
from unicompress.specs import DistillationSpec, FineTuneSpec, LowRankSpec, PruningSpec, QuantizationSpec

from .capabilities import dynamic_range_refusals, tensorflow_capabilities


class TensorFlowAdapter(Adapter):
    """tf_keras (Keras 2) models, compressed with the TensorFlow Model Optimization Toolkit."""

    name = "tensorflow"
    requirements = ("unicompress-tensorflow", "tensorflow-cpu==2.21.0", "tf-keras==2.21.0",
                    "tensorflow-model-optimization==0.8.1", "tf2onnx==1.17.0")
    framework_modules = ("tf_keras", "keras", "tensorflow", "unicompress_tensorflow")
    zoo_models = ("tiny-bert", "tiny-vit", "minilm-l6", "user-encoder")
    package = "unicompress_tensorflow"
    import_first = ("tensorflow", "tf_keras", "tensorflow_model_optimization")
    handler_table = {PruningSpec: ("pruning", "apply_pruning"),
                     QuantizationSpec: ("quantization", "apply_quantization"),
                     DistillationSpec: ("distillation", "apply_distillation"),
                     LowRankSpec: ("lowrank", "apply_low_rank"), FineTuneSpec: ("training", "apply_finetune")}
    answers = {"neutral_weights": ("models", "neutral_weights"), "build_model": ("models", "build_model")}

    def on_framework_loaded(self) -> None:
        # a TF_CONFIG worker must create its MultiWorkerMirroredStrategy before TensorFlow's first op
        importlib.import_module("unicompress_tensorflow.distributed").start_if_worker()

    # ---- data ----------------------------------------------------------------------------------
    #: Dense ("linear"), MultiHeadAttention's EinsumDense projections and Dense layers inside a nested model are
    #: pruned and quantized alike (`layers.kind_of`)
    weight_kinds = frozenset({"linear", "einsum_dense", "nested_dense"})

    def weight_kinds_for(self, spec: Any) -> frozenset[str]:
        """Low rank replaces a Dense by two through the graph replay, which reaches only top-level Dense layers
        ("linear"): an EinsumDense projection (its heads would stop being one kernel each) or a Dense nested in
        another model is refused by the planner before work, or listed as left whole with `allow_partial`."""
        from unicompress.specs import LowRankSpec

        return frozenset({"linear"}) if isinstance(spec, LowRankSpec) else self.weight_kinds

    def capabilities(self) -> Capabilities:
        return tensorflow_capabilities()

    def refusals(self, spec: Any) -> list[Problem]:
        """Claimed values that do not go together here (checked before the model is touched)."""
        from unicompress.specs import Granularity, Norm, PruningSpec

        out = dynamic_range_refusals(spec)
        training = getattr(spec, "training", None)
        if training is not None and training.momentum and (training.warmup_steps or training.weight_decay):
            # Keras' momentum SGD keeps lr-scaled velocities and decays weights outside them: with a changing
            # learning rate or a weight decay its steps are not the core's (unicompress.reference.training)
            out.append(Problem("training.momentum", training.momentum,
                               "Keras' SGD momentum differs from the core's with warmup_steps or weight_decay: use "
                               "momentum 0, or no warm-up and no weight decay with momentum"))
        if isinstance(spec, PruningSpec) and spec.trains:
            if spec.granularity in (Granularity.neuron, Granularity.head):
                out.append(Problem("schedule.kind", spec.schedule.kind.value,
                                   f"{spec.granularity.value} pruning is emulated one-shot on tensorflow: "
                                   "use schedule one_shot, then a finetune stage"))
            elif spec.granularity is Granularity.block and spec.norm is Norm.l2:
                out.append(Problem("norm", "l2", "gradual block pruning on tensorflow scores blocks natively "
                                                 "by the L1 norm (TFMOT AVG pooling): use norm l1"))
        return out

    # ---- model plumbing ------------------------------------------------------------------------
    # A Keras 3 model (`import keras`) is read through its tf_keras rebuild (`keras3.twin`), copied as that
    # rebuild (so every stage works on tf_keras), and refused with a Keras3ModelError where it cannot be rebuilt.
    def _keras(self, model: Any) -> Any:
        """The tf_keras model to read: the model itself, the Keras model of a TFLite one, or a Keras 3 twin."""
        if self._is_tflite(model):
            return model.keras_model
        if _is_keras3(model):
            return self.module("keras3").twin(model)
        return model

    def copy(self, model: Any) -> Any:
        if self._is_tflite(model):
            return model.copy()
        if _is_keras3(model):
            return self.module("keras3").to_tf_keras(model)
        return self.module("layers").copy_model(model)

    def layers(self, model: Any) -> list[LayerInfo]:
        """Every compressible layer; roles from the discovered structure (`assign_roles`), names as fallback."""
        return self.module("layers").roles(self._keras(model))

    def structure(self, model: Any) -> Optional[TransformerStructure]:
        return self.module("layers").structure(self._keras(model))

    def weights(self, model: Any, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        if self._is_tflite(model):
            return model.dequantized_weights(names)
        return self.module("layers").get_weights(self._keras(model), names)

    def set_weights(self, model: Any, weights: dict[str, np.ndarray]) -> None:
        if self._is_tflite(model):
            raise TypeError("a TFLite flatbuffer is read-only; set weights before quantizing")
        self.module("layers").set_weights(self._keras(model), weights)
        if _is_keras3(model):
            self.module("keras3").write_back(model)

    def quantized_weights(self, model: Any) -> dict[str, QuantizedTensor]:
        return self.module("quantization").quantized_weights(model if self._is_tflite(model) else self._keras(model))

    def run(self, model: Any, inputs: Inputs) -> np.ndarray:
        if self._is_tflite(model):
            return model.run(inputs)
        if _is_keras3(model):
            return self.module("keras3").run(model, inputs)
        return self.module("layers").run(model, inputs)

    def describe(self, model: Any) -> list[LayerStats]:
        return self.module("quantization").describe(model if self._is_tflite(model) else self._keras(model))

    def apply(self, model: Any, spec: Any, data: Any = None, ctx: Any = None) -> Any:
        """As `Adapter.apply`; a Keras 3 model is rebuilt as tf_keras first (the stages run on that)."""
        if _is_keras3(model):
            model = self.copy(model)
        return super().apply(model, spec, data, ctx)

    # ---- compression ---------------------------------------------------------------------------
    # ---- export --------------------------------------------------------------------------------
    def export_onnx(self, model: Any, path: Path, example: Inputs, opset: int = 17) -> Path:
        return self.module("export").export_onnx(model if self._is_tflite(model) else self._keras(model), Path(path),
                                               example, opset)

    def export_native(self, model: Any, directory: Path) -> Path:
        return self.module("export").export_native(model if self._is_tflite(model) else self._keras(model),
                                                 Path(directory))

    @staticmethod
    def _is_tflite(model: Any) -> bool:
        return type(model).__name__ == "TFLiteModel" and type(model).__module__.startswith("unicompress_tensorflow")


def _is_keras3(model: Any) -> bool:
    """A Keras 3 model (classes of the `keras` package, not `tf_keras`); imports nothing."""
    mro = type(model).__mro__
    return any(c.__module__.split(".")[0] == "keras" for c in mro) and \
        not any(c.__module__.split(".")[0] == "tf_keras" for c in mro)
