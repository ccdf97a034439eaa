"""The case library: every case is code — a zoo model, a spec, the checks that judge it, its tolerances.

A case declares the capability rows (technique, field, value) it exercises: the rows of its spec
(`spec.capability_items()`), so a backend runs it only when it claims all of them (and probes it
otherwise). `universe()` lists every row the core's specs can produce; the library covers all of them
(a self-test asserts it). A refusal case (`Case.refusal`, check ``refused``) passes when the core planner
refuses its spec before work, identically on every backend; it never serves as the probe of a row.

Example::

    from unicompress.conformance.cases import CASES, cases_for_row
    [c.id for c in cases_for_row(("pruning", "granularity", "n_m"))]
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from ..backend.capabilities import _key
from ..backend.types import TaskData
from ..specs import (DistillationSpec, FineTuneSpec, LowRankSpec, PruningSpec, QuantizationSpec, SpecModel,
                     TrainingSpec)
from ..specs.distillation import DistillKind, FeatureLoss
from ..specs.pruning import Criterion, Granularity, Norm, ScheduleKind, Scope
from ..specs.quantization import CalibrationMethod, Mapping, QuantGranularity, QuantMode, Scheme
from ..specs.training import DistributedStrategy

Row = tuple[str, str, str]


@dataclass(frozen=True)
class Tolerance:
    """How far a backend may be from the reference before a check fails. Override per case with `tol(...)`."""

    sparsity: float = 0.01  # |achieved - target| per layer and overall (units: fraction)
    mask_disagreement: float = 0.0  # fraction of positions allowed to differ from the reference mask (ties)
    schedule: float = 0.03  # |logged sparsity - polynomial(step)|, with one step of slack either side
    scale_rtol: float = 1e-4  # |scale - reference| / reference
    zero_point: int = 0  # |zero_point - reference|
    step_slack: float = 0.01  # dequantized error may exceed half a step by this fraction of a step
    int_mismatch: float = 0.002  # fraction of integers allowed to differ by one from the reference: values
    # within float32 error of a .5 boundary round either way (measured: 0.05% on TensorFlow per-tensor int8)
    output_rel_l2: Optional[float] = None  # quantized vs FP32 logits (relative L2); None: not checked
    onnx_atol: float = 1e-4  # ORT vs framework logits, float models
    onnx_rtol: float = 1e-3
    onnx_quant_rel_l2: float = 0.05  # ORT vs framework logits (relative L2), quantized models
    lowrank_rtol: float = 1e-3  # reconstruction error vs the Eckart-Young optimum, relative to ||W||
    loss_drop: float = 0.02  # the last quarter's mean loss is at least this fraction below the first's
    first_loss_rtol: float = 2e-3  # the first logged loss vs the float64 reference (float32 forward passes)


@dataclass(frozen=True)
class Case:
    """One conformance case. `checks` name functions of `unicompress.conformance.checks.CHECKS`."""

    id: str
    spec: SpecModel
    checks: tuple[str, ...]
    model: str = "tiny-bert"
    tolerance: Tolerance = field(default_factory=Tolerance)
    pre: tuple[SpecModel, ...] = ()  # stages applied first (their rows must be claimed too)
    student_seed: Optional[int] = None  # distillation: the student is built with this seed, the teacher with 0
    unobservable: frozenset[Row] = frozenset()  # rows this case exercises but no check can see
    env: tuple[tuple[str, str], ...] = ()  # environment the stage runs under (restored afterwards)
    refusal: str = ""  # refusal cases: the spec field the core planner must refuse (e.g. "stages[0].m")
    slow: bool = False  # over ~5 s on some backend: the mutant tests mark it slow
    padded: bool = False  # train on batches whose rows end in padding (attention_mask 0): see `task_data`
    description: str = ""

    @property
    def technique(self) -> str:
        return self.spec.technique

    @property
    def exercises(self) -> frozenset[Row]:
        """The capability rows of the main spec (what a passing case proves)."""
        return frozenset(rows_of(self.spec))

    @property
    def requires(self) -> frozenset[Row]:
        """Every row the backend must claim for the case to run in claimed mode (pre-stages included)."""
        rows = set(self.exercises)
        for spec in self.pre:
            rows |= set(rows_of(spec))
        return frozenset(rows)

    @property
    def expects_refusal(self) -> bool:
        """The case passes when the core planner refuses the spec before work (a refusal proves the edge is
        handled alike everywhere, not that the backend can compress: probes do not count it)."""
        return bool(self.refusal)


def rows_of(spec: SpecModel) -> Iterator[Row]:
    """The (technique, field, value) rows of a spec, values as capability-table keys (strings)."""
    for path, value in spec.capability_items():
        yield spec.technique, path, _key(value)


def row_id(row: Row) -> str:
    return f"{row[0]}.{row[1]}={row[2]}"


def _int_range(model: type, name: str) -> range:
    lo = hi = None
    for meta in model.model_fields[name].metadata:
        lo = getattr(meta, "ge", lo)
        hi = getattr(meta, "le", hi)
    return range(int(lo), int(hi) + 1)


def _values(e: type[enum.Enum]) -> list[str]:
    return [m.value for m in e]


def universe() -> list[Row]:
    """Every row the core's specs can put in a capability table, read from the spec definitions."""
    rows: list[Row] = []
    add = lambda t, f, vals: rows.extend((t, f, _key(v)) for v in vals)  # noqa: E731
    add("pruning", "granularity", _values(Granularity))
    add("pruning", "criterion", _values(Criterion))
    add("pruning", "scope", _values(Scope))
    add("pruning", "schedule.kind", _values(ScheduleKind))
    add("pruning", "norm", _values(Norm))
    add("pruning", "remove_pruned", [True])
    add("quantization", "mode", _values(QuantMode))
    add("quantization", "bits", _int_range(QuantizationSpec, "bits"))
    add("quantization", "activation_bits", _int_range(QuantizationSpec, "activation_bits"))
    add("quantization", "scheme", _values(Scheme))
    add("quantization", "mapping", _values(Mapping))
    add("quantization", "granularity", _values(QuantGranularity))
    add("quantization", "calibration.method", _values(CalibrationMethod))
    add("quantization", "overrides", [True])
    add("distillation", "kinds", _values(DistillKind))
    add("distillation", "feature_loss", _values(FeatureLoss))
    add("distillation", "student", ["drop_layers"])
    add("low_rank", "by", ["rank", "energy"])
    add("finetune", "training.distributed", _values(DistributedStrategy))
    return rows


# ---- data: tiny, deterministic, learnable ----------------------------------------------------------------------

def task_data(model: str, num_labels: Optional[int] = None, batch: int = 8, distinct: int = 4,
              repeats: int = 16, seed: int = 0, padded: bool = False) -> TaskData:
    """Train/calibration/evaluation batches for a zoo model: `distinct` batches cycled `repeats` times.

    Labels depend on the inputs (BERT: the second token; ViT: the brightest quadrant), so the loss of a
    training stage can fall in a few dozen steps. BERT rows are full unless `padded`: then row r ends in
    3 * (r % 4) padding tokens (id 0, attention_mask 0), so losses must leave padding out to agree.
    """
    from .. import zoo

    cfg = zoo.config_for(model, num_labels)
    labels_n = cfg.num_labels
    batches = []
    for i in range(distinct):
        x = zoo.inputs_for(model, cfg, batch=batch, seed=seed + 10 + i) if model == "tiny-vit" else \
            zoo.inputs_for(model, cfg, batch=batch, length=16, seed=seed + 10 + i)
        if "input_ids" in x:
            x["attention_mask"] = np.ones_like(x["attention_mask"])  # every row full: a clean training signal
            x["input_ids"] = np.where(x["input_ids"] == 0, 1, x["input_ids"])
            if padded:
                length = x["input_ids"].shape[1]
                for r in range(x["input_ids"].shape[0]):
                    pad = 3 * (r % 4)
                    if pad:
                        x["attention_mask"][r, length - pad:] = 0
                        x["input_ids"][r, length - pad:] = 0
            y = (x["input_ids"][:, 1] % labels_n).astype(np.int64)
        else:
            px = x["pixel_values"]
            h = px.shape[1] // 2
            quads = np.stack([px[:, :h, :h].mean((1, 2)), px[:, :h, h:].mean((1, 2)),
                              px[:, h:, :h].mean((1, 2)), px[:, h:, h:].mean((1, 2))], axis=1)
            y = (quads.argmax(1) % labels_n).astype(np.int64)
        batches.append((x, y))

    def train():
        for _ in range(repeats):
            yield from ((dict(x), y.copy()) for x, y in batches)

    return TaskData(train=train, calibration=lambda: (dict(x) for x, _ in batches),
                    evaluation=lambda: ((dict(x), y.copy()) for x, y in batches), num_labels=labels_n)


def eval_inputs(model: str, batch: int = 8, seed: int = 99) -> dict[str, np.ndarray]:
    """Held-out inputs of the zoo model's kind (padded rows included for BERT)."""
    from .. import zoo

    cfg = zoo.config_for(model)
    if model == "tiny-vit":
        return zoo.inputs_for(model, cfg, batch=batch, seed=seed)
    return zoo.inputs_for(model, cfg, batch=batch, length=16, seed=seed)


# ---- the library -----------------------------------------------------------------------------------------------

def _train(steps: int, lr: float = 3e-3, **kw: Any) -> TrainingSpec:
    return TrainingSpec(steps=steps, learning_rate=lr, batch_size=8, **kw)


PRUNE = ("applies", "sparsity", "pattern", "reference_mask", "runs_finite", "onnx")
PRUNE_TRAINED = ("applies", "sparsity", "pattern", "runs_finite", "onnx")
QUANT = ("applies", "quantized_layers", "levels", "qparams", "dequant_error", "runs_finite", "onnx")
DISTIL = ("applies", "teacher_frozen", "loss_falls", "agreement_rises", "runs_finite", "onnx")
LOWRANK = ("applies", "rank", "reconstruction", "runs_finite", "onnx")
CUT = ("applies", "teacher_frozen", "loss_falls", "student_layers", "runs_finite", "onnx")  # student cut from teacher
REFUSED = ("refused",)  # the stage raised the core planner's refusal, untouched (checks.check_refused)


def _pruning_cases() -> list[Case]:
    ffn_in = {"roles": ["ffn_in"]}
    c = [
        Case("pruning/unstructured-50", PruningSpec(sparsity=0.5), PRUNE,
             description="one-shot magnitude pruning, 50% of every encoder Linear"),
        Case("pruning/unstructured-70-vit", PruningSpec(sparsity=0.7), PRUNE, model="tiny-vit"),
        Case("pruning/unstructured-global-50", PruningSpec(sparsity=0.5, scope="global"), PRUNE,
             description="one magnitude threshold across the encoder"),
        Case("pruning/nm-2-4", PruningSpec(granularity="n_m", n=2, m=4), PRUNE),
        Case("pruning/neuron-l2-50-removed", PruningSpec(granularity="neuron", sparsity=0.5, selector=ffn_in),
             PRUNE, description="half the FFN neurons (rows of ffn_in, columns of ffn_out) removed"),
        Case("pruning/neuron-l1-50-zeroed", PruningSpec(granularity="neuron", sparsity=0.5, norm="l1",
                                                        remove_pruned=False, selector=ffn_in), PRUNE),
        Case("pruning/neuron-l2-50-zeroed", PruningSpec(granularity="neuron", sparsity=0.5, remove_pruned=False,
                                                        selector=ffn_in), PRUNE),
        Case("pruning/head-l2-25-removed", PruningSpec(granularity="head", sparsity=0.25), PRUNE,
             description="one head of four per layer removed"),
        Case("pruning/head-l2-25-zeroed", PruningSpec(granularity="head", sparsity=0.25, remove_pruned=False), PRUNE),
        Case("pruning/head-l1-50-zeroed", PruningSpec(granularity="head", sparsity=0.5, norm="l1",
                                                      remove_pruned=False), PRUNE),
        Case("pruning/block-4x4-50", PruningSpec(granularity="block", sparsity=0.5, block_shape=(4, 4)), PRUNE),
        Case("pruning/polynomial-60", PruningSpec(
            sparsity=0.6, schedule={"kind": "polynomial", "initial_sparsity": 0.0, "begin_step": 0,
                                    "end_step": 10, "frequency": 2, "power": 3.0},
            training=_train(12)), PRUNE_TRAINED + ("schedule",),
            description="gradual magnitude pruning; ctx.history['sparsity'] must follow the polynomial"),
        Case("pruning/polynomial-end-off-frequency", PruningSpec(
            sparsity=0.6, schedule={"kind": "polynomial", "initial_sparsity": 0.0, "begin_step": 0,
                                    "end_step": 9, "frequency": 4, "power": 3.0},
            training=_train(12)), PRUNE_TRAINED + ("schedule",),
            description="end_step 9 off the frequency 4: the masks are still updated at end_step and reach the "
                        "target there (TFMOT alone would stop at step 8, below it)"),
    ] + _edge_cases()
    for crit in ("movement", "l1_regularized", "l0_regularized"):
        c.append(Case(f"pruning/{crit.replace('_', '-')}-50", PruningSpec(
            sparsity=0.5, criterion=crit, regularization=0.1 if crit != "movement" else 0.0,
            training=_train(12)), PRUNE_TRAINED))
    return c


def _edge_cases() -> list[Case]:
    """Edge values where backends used to disagree (refused / 97% / 25% for one spec): each is either
    refused before work by the core planner, the same way everywhere, or gives exactly the reference."""
    return [
        Case("pruning/nm-63-64-refused", PruningSpec(granularity="n_m", n=63, m=64), REFUSED, refusal="stages[0].m",
             description="63:64 on tiny-bert: groups of 64 cannot tile its 32-wide layers"),
        Case("pruning/nm-63-64-wide-layers", PruningSpec(granularity="n_m", n=63, m=64,
                                                         selector={"roles": ["ffn_out"]}), PRUNE,
             description="63:64 on the 64-wide FFN output layers only: exactly the reference's 98.4%"),
        Case("pruning/head-99-refused", PruningSpec(granularity="head", sparsity=0.99), REFUSED,
             refusal="stages[0].sparsity", description="0.99 of 4 heads rounds to 4: no head would be left"),
        Case("pruning/block-64x64-refused", PruningSpec(granularity="block", sparsity=0.5, block_shape=(64, 64)),
             REFUSED, refusal="stages[0].block_shape", description="a 64x64 block is larger than every layer"),
    ]


def _quant_cases() -> list[Case]:
    out8 = dict(output_rel_l2=0.25)
    c = [
        Case("quantization/weight-only-int8-per-channel", QuantizationSpec(mode="weight_only"), QUANT + (
            "output_close",), tolerance=Tolerance(**out8)),
        Case("quantization/weight-only-int8-per-tensor", QuantizationSpec(mode="weight_only", granularity="per_tensor"),
             QUANT),
        Case("quantization/weight-only-int8-per-channel-asym", QuantizationSpec(mode="weight_only", scheme="asymmetric"),
             QUANT),
        Case("quantization/weight-only-int8-per-tensor-asym", QuantizationSpec(
            mode="weight_only", scheme="asymmetric", granularity="per_tensor"), QUANT),
        Case("quantization/dynamic-int8", QuantizationSpec(mode="dynamic"), QUANT + ("output_close",),
             tolerance=Tolerance(**out8)),
        Case("quantization/dynamic-int8-vit", QuantizationSpec(mode="dynamic"), QUANT + ("output_close",),
             model="tiny-vit", tolerance=Tolerance(**out8)),
        Case("quantization/static-int8-minmax", QuantizationSpec(mode="static"), QUANT + (
            "output_close", "activation_bits"), tolerance=Tolerance(**out8)),
        Case("quantization/static-int8-percentile", QuantizationSpec(
            mode="static", calibration={"method": "percentile", "percentile": 99.9}),
            QUANT + ("output_close",), tolerance=Tolerance(**out8)),
        Case("quantization/static-int8-mse", QuantizationSpec(mode="static", calibration={"method": "mse"}),
             QUANT + ("output_close",), tolerance=Tolerance(**out8)),
        Case("quantization/static-int8-per-tensor-asym", QuantizationSpec(
            mode="static", scheme="asymmetric", granularity="per_tensor"), QUANT + ("output_close",),
            tolerance=Tolerance(**out8)),
        Case("quantization/qat-int8", QuantizationSpec(mode="qat", training=_train(24)),
             QUANT + ("loss_falls",), description="fake-quant training, then convert"),
        Case("quantization/log-4bit", QuantizationSpec(mode="weight_only", mapping="log", bits=4), QUANT,
             description="sign-magnitude power-of-two levels"),
        Case("quantization/overrides-mixed", QuantizationSpec(mode="weight_only", overrides=[
            {"pattern": "*.intermediate.dense", "bits": 4},
            {"pattern": "*.attention.output.dense", "skip": True}]), QUANT,
            description="mixed precision: FFN-in at 4 bits, attention output kept in float"),
        Case("quantization/overrides-overlapping", QuantizationSpec(mode="weight_only", overrides=[
            {"pattern": "*.attention.self.*", "bits": 4},
            {"pattern": "*.attention.self.key", "granularity": "per_tensor"},
            {"pattern": "*.attention.self.value", "skip": True}]), QUANT,
            description="overlapping overrides under the one rule: every match applies in order, later fields "
                        "win, any skip wins (key: 4 bits per tensor; value: float; query: 4 bits per channel)"),
        Case("quantization/overrides-skip-then-bits", QuantizationSpec(mode="weight_only", overrides=[
            {"pattern": "*.attention.*", "bits": 4},
            {"pattern": "*.attention.self.key", "bits": 6},
            {"pattern": "*.attention.output.dense", "skip": True},
            {"pattern": "*.dense", "granularity": "per_tensor"}]), QUANT + ("layer_settings",),
            description="a skip followed by a later match that does not skip, and a later bits: under the rule "
                        "query/value 4 bits, key 6 (per channel), attention output float, FFN 8 bits per tensor "
                        "(first-match gives key 4 and quantizes the attention output; last-match un-skips it)"),
    ]
    for b in _int_range(QuantizationSpec, "bits"):
        if b != 8:
            c.append(Case(f"quantization/weight-only-{b}bit", QuantizationSpec(mode="weight_only", bits=b), QUANT))
    for b in _int_range(QuantizationSpec, "activation_bits"):
        if b != 8:
            # ONNX carries 4-, 8- and 16-bit activations; other widths can only be seen as a clipped range
            hidden = frozenset() if b in (4, 16) else frozenset({("quantization", "activation_bits", str(b))})
            c.append(Case(f"quantization/static-act{b}bit", QuantizationSpec(mode="static", activation_bits=b),
                          QUANT + ("activation_bits",), unobservable=hidden))
    return c


def _user_model_cases() -> list[Case]:
    """Structural rows on each backend's own user architecture (``user-encoder``: HF MPNet on torch, a Keras
    MultiHeadAttention encoder on TensorFlow, nn.TransformerEncoder on Paddle), not only on the zoo."""
    out8 = {"output_rel_l2": 0.25}
    ffn_in = {"roles": ["ffn_in"]}
    return [
        Case("pruning/user-encoder-unstructured-50", PruningSpec(sparsity=0.5), PRUNE, model="user-encoder",
             description="every selected projection, attention included, at 50%"),
        Case("pruning/user-encoder-nm-2-4", PruningSpec(granularity="n_m", n=2, m=4), PRUNE, model="user-encoder"),
        Case("pruning/user-encoder-head-50-removed", PruningSpec(granularity="head", sparsity=0.5), PRUNE,
             model="user-encoder", description="two heads of four per block removed, found from layer types"),
        Case("pruning/user-encoder-neuron-50-removed", PruningSpec(granularity="neuron", sparsity=0.5,
                                                                   selector=ffn_in), PRUNE, model="user-encoder"),
        Case("quantization/user-encoder-static-int8", QuantizationSpec(mode="static"), QUANT + ("output_close",),
             model="user-encoder", tolerance=Tolerance(**out8)),
        Case("distillation/user-encoder-feature-mse", DistillationSpec(
            kinds=["response", "feature"], feature_loss="mse", alpha=1.0, training=_train(30, 2e-3)),
            DISTIL + ("layer_map",), model="user-encoder", student_seed=1,
            description="logits and hidden states, block by block, on the backend's own encoder (teacher: seed 0, "
                        "its classifier found by structure discovery and sharpened; the student: seed 1, so "
                        "its own head is random and logit agreement needs the response loss too)"),
        Case("distillation/user-encoder-feature-drop-layers", DistillationSpec(
            kinds=["feature"], feature_loss="mse", alpha=1.0, student={"keep_layers": [0]},
            training=_train(30, 2e-3)), CUT + ("layer_map",), model="user-encoder",
            description="a 1-block student cut from the user's encoder, paired by the default map with its last "
                        "block"),
    ]


def _distil_cases() -> list[Case]:
    t = _train(30, 2e-3)
    return [
        Case("distillation/response", DistillationSpec(kinds=["response"], temperature=2.0, alpha=1.0, training=t),
             DISTIL + ("first_loss",), student_seed=1,
             description="a differently initialised student learns the teacher's logits"),
        Case("distillation/feature-mse", DistillationSpec(kinds=["feature"], feature_loss="mse", alpha=1.0,
                                                          training=t), DISTIL + ("layer_map", "first_loss"),
             student_seed=1),
        Case("distillation/feature-explicit-map", DistillationSpec(
            kinds=["feature"], feature_loss="mse", alpha=1.0, layer_map=[(0, 1), (1, 0)], training=t),
            DISTIL + ("layer_map", "first_loss"), student_seed=1,
            description="an explicit, crossed layer map: the losses pair exactly the layers the spec names"),
        Case("distillation/padded-feature-mse-and-task", DistillationSpec(
            kinds=["response", "feature"], feature_loss="mse", alpha=0.5, layer_map=[(0, 1), (1, 0)], training=t),
            DISTIL + ("layer_map", "first_loss"), student_seed=1, padded=True,
            description="rows ending in padding: the feature term averages real tokens only and the pairs' mean; "
                        "half the loss is the task's"),
        Case("distillation/padded-feature-cosine", DistillationSpec(
            kinds=["feature"], feature_loss="cosine", alpha=1.0, training=t),
            DISTIL + ("layer_map", "first_loss"), student_seed=1, padded=True),
        Case("distillation/padded-relation", DistillationSpec(kinds=["relation"], alpha=1.0, training=t),
             tuple(c for c in DISTIL if c != "agreement_rises") + ("first_loss",), student_seed=1, padded=True,
             description="MiniLM relations on padded rows: padded keys masked, padded query rows left out"),
        Case("distillation/feature-drop-first-layer", DistillationSpec(
            kinds=["feature"], feature_loss="mse", alpha=1.0, student={"keep_layers": [0]}, training=t),
            CUT + ("layer_map",),
            description="a student that keeps the teacher's first layer: the default map still pairs it with the "
                        "teacher's last layer [(0, 1)], not the layer it was cut from [(0, 0)]"),
        Case("distillation/feature-drop-layers-explicit-map", DistillationSpec(
            kinds=["feature"], feature_loss="mse", alpha=1.0, student={"num_layers": 1}, layer_map=[(0, 0)],
            training=t), CUT + ("layer_map",),
            description="a 1-layer student (the teacher's last) paired by an explicit map with the teacher's first"),
        Case("distillation/feature-minilm-6-to-3", DistillationSpec(
            kinds=["feature"], feature_loss="mse", alpha=1.0, student={"num_layers": 3}, training=_train(4, 1e-3)),
            ("applies", "teacher_frozen", "layer_map", "student_layers", "runs_finite"), model="minilm-l6",
            slow=True,
            description="6 -> 3 layers: the student keeps teacher layers [0, 2, 5]; the default map pairs "
                        "[(0, 1), (1, 3), (2, 5)]"),
        Case("distillation/feature-drop-layers", DistillationSpec(
            kinds=["feature"], feature_loss="mse", alpha=1.0, student={"num_layers": 1}, training=t),
            ("applies", "teacher_frozen", "loss_falls", "layer_map", "runs_finite", "onnx"),
            description="a 1-layer student cut from the teacher: the default map pairs it with the last layer"),
        Case("distillation/feature-cosine", DistillationSpec(kinds=["response", "feature"], feature_loss="cosine",
                                                             alpha=1.0, training=t), DISTIL + ("first_loss",),
             student_seed=1),
        Case("distillation/relation", DistillationSpec(kinds=["relation"], alpha=1.0, training=t),
             tuple(c for c in DISTIL if c != "agreement_rises") + ("first_loss",), student_seed=1,
             description="MiniLM-style attention-relation distillation (it matches attention, not logits, "
                         "so logit agreement is not asked of it)"),
        Case("distillation/response-drop-layers", DistillationSpec(
            kinds=["response"], alpha=1.0, student={"num_layers": 1}, training=t),
            ("applies", "teacher_frozen", "loss_falls", "student_layers", "runs_finite", "onnx"),
            description="a 1-layer student cut from the teacher learns its logits"),
    ]


def _lowrank_cases() -> list[Case]:
    return [
        Case("low_rank/rank-8", LowRankSpec(rank=8), LOWRANK),
        Case("low_rank/energy-90", LowRankSpec(energy=0.9, force=True), LOWRANK),
        Case("low_rank/rank-6-vit", LowRankSpec(rank=6), LOWRANK, model="tiny-vit"),
    ]


#: a launch of one data-parallel worker, as torchrun / torch.distributed.run would describe it; MASTER_PORT
#: "0" is replaced by a free port when the case runs
ONE_WORKER_LAUNCH = (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                     ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "0"))


def _finetune_cases() -> list[Case]:
    pre = (PruningSpec(sparsity=0.5),)
    checks = ("applies", "loss_falls", "keeps_zeros", "runs_finite", "onnx")
    return [
        Case("finetune/after-pruning", FineTuneSpec(training=_train(24)), checks, pre=pre,
             description="task training after 50% pruning: loss falls, pruned weights stay zero"),
        Case("finetune/data-parallel", FineTuneSpec(training=_train(24, distributed="data_parallel")), checks,
             pre=pre, env=ONE_WORKER_LAUNCH,
             description="data-parallel training launched as one worker (the variables torchrun sets)"),
    ]


CASES: tuple[Case, ...] = tuple(_pruning_cases() + _quant_cases() + _user_model_cases() + _distil_cases()
                                + _lowrank_cases() + _finetune_cases())
CASES_BY_ID: dict[str, Case] = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "case ids must be unique"


def cases_for_row(row: Row, cases: Iterable[Case] = CASES) -> list[Case]:
    """The cases that exercise a row, simplest first (fewest required rows)."""
    return sorted((c for c in cases if row in c.exercises), key=lambda c: (len(c.requires), c.id))


def uncovered_rows(cases: Iterable[Case] = CASES) -> list[Row]:
    """Rows of the universe no case exercises (the library must leave none)."""
    covered = set().union(*(c.exercises for c in cases))
    return [r for r in universe() if r not in covered]
