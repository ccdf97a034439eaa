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
from ..specs import DistillationSpec, LowRankSpec, PruningSpec, QuantizationSpec
from ..specs.distillation import DistillKind
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
                                  (("distillation/feature-explicit-map", "layer_map"),
                                   ("distillation/feature-drop-layers-explicit-map", "layer_map"))),
    "wrong_rank": Mutation("factorises at one rank more than asked", (("low_rank/rank-8", "rank"),)),
    "lossy_export": Mutation("exports weights with a small offset (zeros lost, outputs drift)",
                             (("pruning/unstructured-50", "onnx"),)),
    "first_match_overrides": Mutation("applies only the first override that matches a layer (TensorFlow's old "
                                      "`layer_settings`), not the core's rule",
                                      (("quantization/overrides-overlapping", "quantized_layers"),
                                       ("quantization/overrides-skip-then-bits", "layer_settings"))),
    "last_match_unskips": Mutation("merges the matching overrides with later ones winning, skip included (a later "
                                   "match without skip quantizes a skipped layer again)",
                                   (("quantization/overrides-skip-then-bits", "layer_settings"),)),
    "kept_layers_map": Mutation("pairs each student layer with the teacher layer it was cut from (Paddle's old "
                                "`kept_layers` map, e.g. [(0, 0), (1, 2), (2, 5)] for 6 -> 3) instead of the "
                                "core's default map",
                                (("distillation/feature-drop-first-layer", "layer_map"),
                                 ("distillation/user-encoder-feature-drop-layers", "layer_map"),
                                 ("distillation/feature-minilm-6-to-3", "layer_map"))),
    "reversed_layer_map": Mutation("pairs the student's layers with the teacher's in reverse order",
                                   (("distillation/feature-mse", "layer_map"),
                                    ("distillation/user-encoder-feature-mse", "layer_map"))),
    "summed_pairs": Mutation("adds the feature and relation terms of the layer map's pairs instead of averaging "
                             "them (TensorFlow's old loss: 2 pairs gave twice the loss)",
                             (("distillation/feature-explicit-map", "first_loss"),
                              ("distillation/padded-feature-mse-and-task", "first_loss"))),
    "padding_counted": Mutation("trains on the batches with every attention_mask set to 1, so padded tokens count "
                                "in the losses (TensorFlow's and Paddle's old feature and relation losses)",
                                (("distillation/padded-feature-mse-and-task", "first_loss"),
                                 ("distillation/padded-relation", "first_loss"))),
    "clamped_nm": Mutation("shrinks an N:M group that does not tile a layer to the largest m that does "
                           "(63:64 -> 31:32) instead of refusing", (("pruning/nm-63-64-refused", "refused"),)),
    "capped_nm": Mutation("caps N:M sparsity at n = m/2", (("pruning/nm-63-64-wide-layers", "sparsity"),)),
    "clamped_heads": Mutation("keeps one head where the sparsity would remove every head instead of refusing",
                              (("pruning/head-99-refused", "refused"),)),
    "clamped_block": Mutation("shrinks a block larger than a layer to the layer instead of refusing",
                              (("pruning/block-64x64-refused", "refused"),)),
    "aligned_end_step": Mutation("ends a polynomial schedule at the last step on the frequency (TFMOT's own rule: "
                                 "end_step 9 with frequency 4 stops updating at 8)",
                                 (("pruning/polynomial-end-off-frequency", "schedule"),)),
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
        elif m in ("first_match_overrides", "last_match_unskips") and isinstance(spec, QuantizationSpec) \
                and spec.overrides:
            spec = _rewrite_overrides(spec, [layer.name for layer in spec.selector.select(self.layers(model))],
                                      first_match=m == "first_match_overrides")
        elif m in ("kept_layers_map", "reversed_layer_map") and isinstance(spec, DistillationSpec) \
                and spec.layer_map is None and {DistillKind.feature, DistillKind.relation} & set(spec.kinds):
            spec = _wrong_layer_map(spec, self._depth(ctx.teacher if ctx.teacher is not None else model),
                                    kept=m == "kept_layers_map")
        elif m == "summed_pairs" and isinstance(spec, DistillationSpec) and \
                {DistillKind.feature, DistillKind.relation} & set(spec.kinds):
            pairs = len(spec.resolved_layer_map(self._depth(model), self._depth(ctx.teacher if ctx.teacher is not None else model)))
            spec = spec.model_copy(update={"feature_weight": spec.feature_weight * pairs,
                                           "relation_weight": spec.relation_weight * pairs})
        elif m == "padding_counted" and isinstance(spec, DistillationSpec) and data is not None:
            data = _unpadded(data)
        elif m == "aligned_end_step" and isinstance(spec, PruningSpec) and spec.schedule.kind.value == "polynomial":
            sch = spec.schedule
            aligned = sch.begin_step + (sch.end_step - sch.begin_step) // sch.frequency * sch.frequency
            if aligned > sch.begin_step and aligned != sch.end_step:
                spec = spec.model_copy(update={"schedule": sch.model_copy(update={"end_step": aligned})})
        elif m in ("clamped_nm", "capped_nm", "clamped_heads", "clamped_block") and isinstance(spec, PruningSpec):
            spec = _clamped(spec, m, self.structure(model),
                            [layer.shape for layer in spec.selector.select(self.layers(model))])
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

    def _depth(self, model: Any) -> int:
        st = self.inner.structure(model)
        if st is None:
            raise ValueError(f"{self.name}: no structure, cannot count the layers")
        return st.num_layers

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


# ---- spec rewrites of the mutations (each a plausible, wrong reading of the spec) ------------------------------

def _unpadded(data: TaskData) -> TaskData:
    """The same batches with every attention_mask set to 1 (padded tokens become real ones)."""
    def ones(batches):
        def gen():
            for x, y in batches():
                x = dict(x)
                if "attention_mask" in x:
                    x["attention_mask"] = np.ones_like(x["attention_mask"])
                yield x, y
        return gen

    return replace(data, train=ones(data.train)) if data.train is not None else data


def _rewrite_overrides(spec: QuantizationSpec, names: list[str], first_match: bool) -> QuantizationSpec:
    """The same spec with one exact-name override per layer, resolved by a wrong rule: the first matching
    override only, or all matches with later ones winning `skip` too (an explicit ``skip: false``)."""
    import fnmatch

    fields = ("bits", "granularity", "scheme")
    resolved = []
    for name in names:
        matches = [o for o in spec.overrides if fnmatch.fnmatchcase(name, o.pattern)]
        if not matches:
            continue
        chosen = matches[:1] if first_match else matches
        out: dict[str, Any] = {"pattern": name, "skip": False}
        for o in chosen:
            out["skip"] = o.skip  # the last match decides (first-match: the only one)
            out.update({f: getattr(o, f) for f in fields if getattr(o, f) is not None})
        resolved.append(out)
    return QuantizationSpec(**{**spec.model_dump(mode="json"), "overrides": resolved})


def _wrong_layer_map(spec: DistillationSpec, teacher_layers: int, kept: bool) -> DistillationSpec:
    """An explicit layer map replacing the core's default: the cut-from (kept) layers, or reversed order."""
    keep = spec.student.layers_to_keep(teacher_layers) if spec.student is not None else list(range(teacher_layers))
    if kept:
        pairs = list(enumerate(keep))
    else:
        pairs = [(s, t) for s, t in zip(range(len(keep)), reversed(range(teacher_layers)))]
    return spec.model_copy(update={"layer_map": pairs})


def _clamped(spec: PruningSpec, mutation: str, structure: Optional[TransformerStructure],
             shapes: list[tuple[int, ...]]) -> PruningSpec:
    """The spec bent until the planner accepts it (what an adapter that clamps instead of refusing does)."""
    data = spec.model_dump(mode="json")
    widths = [s[1] for s in shapes if len(s) == 2]
    if mutation == "clamped_nm" and spec.granularity is Granularity.n_m:
        m = next(m for m in range(spec.m, 1, -1) if all(w % m == 0 for w in widths))
        data.update(n=max(1, min(m - 1, round(spec.n * m / spec.m))), m=m)  # 63:64 on 32-wide -> 31:32
    elif mutation == "capped_nm" and spec.granularity is Granularity.n_m:
        data.update(n=min(spec.n, spec.m // 2))
    elif mutation == "clamped_heads" and spec.granularity is Granularity.head and structure is not None:
        heads = min(a.num_heads for a in structure.attention)
        data.update(sparsity=min(spec.sparsity, (heads - 1) / heads))
    elif mutation == "clamped_block" and spec.granularity is Granularity.block:
        rows = min(s[0] for s in shapes if len(s) == 2)
        data.update(block_shape=[min(spec.block_shape[0], rows), min(spec.block_shape[1], min(widths))])
    else:
        return spec
    return PruningSpec(**data)
