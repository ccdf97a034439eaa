"""OnnxAdapter: the `onnx` backend. Imports neither onnx nor onnxruntime at module level.

The model object is an `onnx.ModelProto`. The core plans every stage (`ctx.plan`); the handlers here only
carry the plan out on the graph: numpy on the weight initializers for pruning and low rank,
`onnxruntime.quantization` for int8. This file is the template a third-party backend copies.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from unicompress.backend.adapter import Adapter, StageContext
from unicompress.backend.capabilities import Capabilities
from unicompress.backend.types import Inputs, TaskData
from unicompress.errors import CapabilityError, Problem
from unicompress.specs import LowRankSpec, PruningSpec, QuantizationSpec

from .capabilities import onnx_capabilities


class OnnxAdapter(Adapter):
    """ONNX backend: compresses an `onnx.ModelProto` (e.g. from `onnx.load("model.onnx")`) in place of a copy.

    Example: ``compress(onnx.load("encoder.onnx"), {"stages": [{"technique": "quantization", "mode": "dynamic"}]},
    backend="onnx")``.
    """

    name = "onnx"
    requirements = ("onnx==1.17.0", "onnxruntime>=1.17", "ml_dtypes")
    framework_modules = ("onnx",)
    weight_kinds = frozenset({"linear"})
    zoo_models = ("tiny-bert", "tiny-vit", "minilm-l6", "user-encoder")

    package = "unicompress_onnx"
    import_first = ("onnx", "onnxruntime")
    handler_table = {PruningSpec: ("pruning", "apply_pruning"), QuantizationSpec: ("quantization", "apply_quantization"),
                     LowRankSpec: ("lowrank", "apply_low_rank")}
    answers = {"layers": ("layers", "layer_infos"), "weights": ("layers", "weights"),
               "set_weights": ("layers", "set_weights"), "quantized_weights": ("layers", "quantized_weights"),
               "run": ("runtime", "run"), "describe": ("layers", "describe"), "build_model": ("models", "build_model")}

    def capabilities(self) -> Capabilities:
        return onnx_capabilities()

    def refusals(self, spec: Any) -> list[Problem]:
        """What onnxruntime.quantization cannot express although each value is in the table."""
        out = []
        if isinstance(spec, QuantizationSpec):
            if spec.scheme.value == "symmetric" and not spec.narrow_range:
                out.append(Problem("narrow_range", False, "ONNX Runtime's symmetric int8 grid is [-127, 127]: "
                                   "use narrow_range: true or scheme: asymmetric"))
            if spec.mode.value == "dynamic" and spec.activation_scheme.value == "symmetric":
                out.append(Problem("activation_scheme", "symmetric", "quantize_dynamic computes asymmetric uint8 "
                                   "activations (DynamicQuantizeLinear): use activation_scheme: asymmetric"))
        return out

    def is_model(self, obj: Any) -> bool:
        """An onnx.ModelProto, judged by its type's module and name (onnx is not imported)."""
        t = type(obj)
        return t.__name__ == "ModelProto" and t.__module__.split(".")[0] == "onnx"

    def copy(self, model: Any) -> Any:
        out = type(model)()
        out.CopyFrom(model)
        return out

    def apply(self, model: Any, spec: Any, data: Optional[TaskData] = None,
              ctx: Optional[StageContext] = None) -> Any:
        """Refuse what the table does not claim (also on direct calls), then run the core's plan."""
        caps = self.capabilities()
        problems = caps.problems(spec) + self.refusals(spec) if hasattr(spec, "capability_items") else []
        if problems:
            raise CapabilityError(self.name, problems, caps.to_text())
        return super().apply(model, spec, data, ctx)

    def export_onnx(self, model: Any, path: Path, example: Inputs, opset: int = 17) -> Path:
        return self.module("runtime").export_onnx(model, path)
