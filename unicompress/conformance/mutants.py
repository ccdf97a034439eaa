"""Deliberately broken adapters: the suite's own test. Each mutation wraps a real adapter and breaks one
promise; the suite must fail the mutant where it passes the real adapter (tests/test_conformance_mutants.py).

Example::

    mutant = MutantAdapter(get_backend("torch"), "underprune")   # prunes 10% less than asked
    CaseRunner(mutant).result(CASES_BY_ID["pruning/unstructured-50"], "sparsity").passed   # False
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..backend.adapter import Adapter, StageContext
from ..backend.capabilities import Capabilities, Support
from ..backend.types import Inputs, LayerInfo, LayerStats, QuantizedTensor, TaskData, TransformerStructure
from ..specs import DistillationSpec, LowRankSpec, PruningSpec
from ..specs.pruning import Granularity
from .cases import universe


@dataclass(frozen=True)
class Mutation:
    """What a mutation breaks, and where the suite must catch it: (case id, check) pairs or a contract check."""

    description: str
    catches: tuple[tuple[str, str], ...] = ()
    contract: Optional[str] = None  # "failure_isolation" or "claims"


MUTATIONS: dict[str, Mutation] = {
    "underprune": Mutation("prunes 10% less than asked",
                           (("pruning/unstructured-50", "sparsity"), ("pruning/unstructured-50", "reference_mask"))),
    "unpatterned_nm": Mutation("prunes N:M as unstructured at the same sparsity", (("pruning/nm-2-4", "pattern"),)),
    "wrong_zero_point": Mutation("reports zero-points off by one",
                                 (("quantization/weight-only-int8-per-channel", "qparams"),
                                  ("quantization/weight-only-int8-per-channel", "dequant_error"))),
    "leaky_teacher": Mutation("nudges the teacher's weights during distillation",
                              (("distillation/response", "teacher_frozen"),)),
    "ignored_layer_map": Mutation("distils with the default layer map whatever layer_map the spec gives",
                                  (("distillation/feature-explicit-map", "layer_map"),)),
    "wrong_rank": Mutation("factorises at one rank more than asked", (("low_rank/rank-8", "rank"),)),
    "lossy_export": Mutation("exports weights with a small offset (zeros lost, outputs drift)",
                             (("pruning/unstructured-50", "onnx"),)),
    "false_claim": Mutation("claims every row of the spec universe", contract="claims"),
    "dirty_failure": Mutation("works in place and scribbles on the model when a stage fails",
                              contract="failure_isolation"),
}


class MutantAdapter(Adapter):
    """An adapter that delegates to `inner` except for one deliberate bug (`mutation`, a key of MUTATIONS)."""

    def __init__(self, inner: Adapter, mutation: str, name: Optional[str] = None):
        if mutation not in MUTATIONS:
            raise ValueError(f"unknown mutation {mutation!r}; known: {', '.join(MUTATIONS)}")
        self.inner = inner
        self.mutation = mutation
        self.name = name or f"{inner.name}-mutant-{mutation}"  # type: ignore[misc]
        self.requirements = inner.requirements  # type: ignore[misc]
        self.framework_modules = inner.framework_modules  # type: ignore[misc]

    # ---- claims -----------------------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        caps = self.inner.capabilities()
        if self.mutation != "false_claim":
            return caps
        table = {t: {f: dict(v) for f, v in fields.items()} for t, fields in caps.table.items()}
        for technique, path, value in universe():
            row = table.setdefault(technique, {}).setdefault(path, {})
            if row.get(value, Support.unsupported) is Support.unsupported:
                row[value] = Support.native
        return Capabilities(self.name, table, caps.notes)

    def refusals(self, spec: Any) -> list:
        return [] if self.mutation == "false_claim" else self.inner.refusals(spec)

    # ---- plumbing: delegated ------------------------------------------------------------------------------
    def is_model(self, obj: Any) -> bool:
        return self.inner.is_model(obj)

    def copy(self, model: Any) -> Any:
        return model if self.mutation == "dirty_failure" else self.inner.copy(model)

    def layers(self, model: Any) -> list[LayerInfo]:
        return self.inner.layers(model)

    def structure(self, model: Any) -> Optional[TransformerStructure]:
        return self.inner.structure(model)

    def weights(self, model: Any, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        return self.inner.weights(model, names)

    def set_weights(self, model: Any, weights: dict[str, np.ndarray]) -> None:
        self.inner.set_weights(model, weights)

    def quantized_weights(self, model: Any) -> dict[str, QuantizedTensor]:
        out = self.inner.quantized_weights(model)
        if self.mutation == "wrong_zero_point":
            out = {k: replace(t, zero_point=np.asarray(t.zero_point) + 1) for k, t in out.items()}
        return out

    def run(self, model: Any, inputs: Inputs) -> np.ndarray:
        return self.inner.run(model, inputs)

    def describe(self, model: Any) -> list[LayerStats]:
        return self.inner.describe(model)

    def build_model(self, zoo: str, **kwargs: Any) -> Any:
        return self.inner.build_model(zoo, **kwargs)

    def handlers(self) -> dict[type, Callable[..., Any]]:
        return self.inner.handlers()

    # ---- the bugs ----------------------------------------------------------------------------------------------
    def apply(self, model: Any, spec: Any, data: Optional[TaskData] = None,
              ctx: Optional[StageContext] = None) -> Any:
        ctx = ctx or StageContext()
        m = self.mutation
        if m == "underprune" and isinstance(spec, PruningSpec) and spec.sparsity is not None:
            spec = spec.model_copy(update={"sparsity": spec.sparsity * 0.9})
        elif m == "unpatterned_nm" and isinstance(spec, PruningSpec) and spec.granularity is Granularity.n_m:
            spec = PruningSpec(sparsity=spec.target_sparsity, selector=spec.selector)
        elif m == "ignored_layer_map" and isinstance(spec, DistillationSpec) and spec.layer_map is not None:
            spec = spec.model_copy(update={"layer_map": None})
        elif m == "wrong_rank" and isinstance(spec, LowRankSpec) and spec.rank is not None:
            spec = spec.model_copy(update={"rank": spec.rank + 1})
        try:
            out = self.inner.apply(model, spec, data, ctx)
        except Exception:
            if m == "dirty_failure":
                self.inner.set_weights(model, {k: v + 1.0 for k, v in self.inner.weights(model).items()})
            raise
        if m == "leaky_teacher" and isinstance(spec, DistillationSpec) and ctx.teacher is not None:
            w = self.inner.weights(ctx.teacher)
            name = sorted(w)[0]
            self.inner.set_weights(ctx.teacher, {name: w[name] * 1.01})
        return out

    def export_onnx(self, model: Any, path: Path, example: Inputs, opset: int = 17) -> Path:
        path = self.inner.export_onnx(model, path, example, opset)
        if self.mutation == "lossy_export":
            import onnx
            from onnx import numpy_helper

            proto = onnx.load(str(path))
            for i, t in enumerate(proto.graph.initializer):
                arr = numpy_helper.to_array(t)
                if arr.dtype == np.float32 and arr.ndim == 2 and arr.size >= 16:
                    proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr + 1e-3, t.name))
            onnx.save(proto, str(path))
        return Path(path)

    def export_native(self, model: Any, directory: Path) -> Path:
        return self.inner.export_native(model, directory)
