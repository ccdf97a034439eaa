"""The public API: compress() runs a recipe; prune/quantize/distill/factorize run one technique.

Flow (DESIGN.md): recipe -> adapter (explicit or from the model type) -> capability, data and
layer checks (refuse before touching anything) -> model copy -> stages in order (native calls,
then `describe`) -> export (atomic) -> evaluation -> report.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from .backend.adapter import Adapter, StageContext
from .backend.plan import StagePlan
from .backend.registry import resolve_backend
from .backend.types import Inputs, TaskData, TransformerStructure
from .data.checks import check_task_data, non_finite_tensors
from .errors import (CapabilityError, ExportError, InvalidDataError, JudgeError, MissingDataError,
                     ModelNotSupportedError, NonFiniteWeightsError, OutputPathError, Problem, StageError,
                     UnicompressError)
from .judge import before_stage, judge_stage
from .planner import plan_stage, resolve_structure
from .recipe_io import load_recipe, validate_data
from .record import reproducibility_record
from .report import CompressionReport, StageReport, plan_summary
from .specs import (DistillationSpec, ExportFormat, FineTuneSpec, LowRankSpec, PruningSpec, QuantizationSpec,
                    QuantMode, Recipe, StructureDeclaration)
from .specs.base import SpecModel
from .tasks import evaluate_task, task_problems

RecipeLike = Union[Recipe, SpecModel, Sequence[SpecModel], dict, str, Path]
Evaluate = Callable[[Any], Union[float, dict]]


@dataclass
class CompressionResult:
    """The compressed model, its report, and where exports were written."""

    model: Any
    report: CompressionReport
    backend: str
    exports: dict[str, Path] = field(default_factory=dict)

    @property
    def history(self) -> dict[int, dict[str, list[tuple[int, float]]]]:
        """Training curves logged by each stage, keyed by stage index."""
        return {s.index: s.history for s in self.report.stages}


def as_recipe(recipe: RecipeLike) -> Recipe:
    """Accept a Recipe, one spec, a list of specs, a dict, a path or YAML text."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, SpecModel) and hasattr(recipe, "technique"):
        return Recipe(name=recipe.technique, stages=[recipe])
    if isinstance(recipe, (list, tuple)):
        return Recipe(name="+".join(s.technique for s in recipe), stages=list(recipe))
    return load_recipe(recipe)


def recipe_problems(adapter: Adapter, recipe: Recipe) -> list[Problem]:
    """What the backend refuses in the recipe itself, without a model: its capability table, its `refusals()`
    of value pairs, and distributed training it cannot do. `validate --backend` and `compress()` both ask this."""
    caps = adapter.capabilities()
    problems: list[Problem] = []
    for i, stage in enumerate(recipe.stages):
        problems += [Problem(f"stages[{i}].{p.path.split('.', 1)[1] if '.' in p.path else p.path}", p.value,
                             p.allowed) for p in caps.problems(stage)]
        problems += [Problem(f"stages[{i}].{p.path}", p.value, p.allowed) for p in adapter.refusals(stage)]
        problems += _distributed_problems(i, stage, caps)
    return problems


def check_plan(adapter: Adapter, model: Any, recipe: Recipe, data: Optional[TaskData],
               structure: Optional[TransformerStructure] = None, teacher: Any = None) -> list[StagePlan]:
    """Everything that can be refused before the model is touched: capabilities, data, and each stage's plan
    (layer selection, structure, shapes: `unicompress.planner`). Returns the plans on the input model.

    Distillation: data whose tokenizers differ without teacher inputs, feature/relation losses across
    tokenizers and (given `teacher`) a teacher whose vocabulary differs from the student's while the data
    has no teacher inputs are refused here (`unicompress.data.teacher.check_distillation_data`)."""
    problems = recipe_problems(adapter, recipe)
    if problems:
        raise CapabilityError(adapter.name, problems, adapter.capabilities().to_text())
    missing = [f"stages[{i}] ({stage.technique}) needs {need}"
               for i, stage in enumerate(recipe.stages) for need in [_data_need(stage)]
               if need and not _has(data, need)]
    if missing:
        raise MissingDataError("; ".join(missing) + ". Pass data=TaskData(train=..., calibration=...).")
    _check_teacher_inputs(adapter, model, recipe, data, teacher)
    return [plan_stage(adapter, model, stage, i, structure) for i, stage in enumerate(recipe.stages)]


def _check_teacher_inputs(adapter: Adapter, model: Any, recipe: Recipe, data: Optional[TaskData],
                          teacher: Any) -> None:
    """Refuse distillation stages whose teacher would read token ids that are not its own."""
    from .data.teacher import check_distillation_data, word_embedding_rows

    rows: dict[str, Optional[int]] = {}
    distilling = any(isinstance(stage, DistillationSpec) for stage in recipe.stages)
    if distilling and teacher is not None and teacher is not model and adapter.is_model(teacher):
        rows = {"student_rows": word_embedding_rows(adapter.layers(model)),
                "teacher_rows": word_embedding_rows(adapter.layers(teacher))}
    check_distillation_data(recipe.stages, data, **rows)


def export_targets(recipe: Recipe, backend: str) -> dict[str, Path]:
    """The paths a recipe's export writes: ``{"onnx": <dir>/<name>.onnx, "native": <dir>/<name>.<backend>}``."""
    if recipe.export is None:
        return {}
    directory = Path(recipe.export.directory)
    targets = {"onnx": directory / f"{recipe.name}.onnx", "native": directory / f"{recipe.name}.{backend}"}
    return {k: v for k, v in targets.items() if ExportFormat(k) in recipe.export.formats}


def output_problems(directory: Union[str, Path], files: Sequence[Path] = (), folders: Sequence[Path] = (),
                    field_name: str = "export.directory") -> list[Problem]:
    """Why `directory` (made when missing) could not receive `files` and `folders`, found without writing.

    Checks that it, or the nearest folder above it that exists, is a writable folder (not a file), and that no
    target is of the wrong kind (a folder where a file goes, a file where a folder goes).
    """
    directory = Path(directory)
    problems: list[Problem] = []
    existing = directory
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == directory else f"cannot be made: {existing} is a file"
        return [Problem(field_name, str(directory), f"{what}; the exports need a folder there")]
    if not existing.exists():
        return [Problem(field_name, str(directory), f"cannot be made: {existing} is a broken link")]
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == directory else f"cannot be made: {existing} is not writable"
        return [Problem(field_name, str(directory), f"{what} by this user (or is on a read-only file system)")]
    for path in files:
        if path.is_dir():
            problems.append(Problem(field_name, str(path), "is a folder where the export writes a file; move it"))
    for path in folders:
        if path.exists() and not path.is_dir():
            problems.append(Problem(field_name, str(path), "is a file where the export writes a folder; move it"))
    return problems


def export_problems(recipe: Recipe, backend: str) -> list[Problem]:
    """Why the recipe's export could not be written (see `output_problems`); [] when it can or there is none."""
    if recipe.export is None:
        return []
    targets = export_targets(recipe, backend)
    return output_problems(recipe.export.directory, [t for k, t in targets.items() if k == "onnx"],
                           [t for k, t in targets.items() if k == "native"])


def _distributed_problems(index: int, stage: Any, caps: Any) -> list[Problem]:
    """Any stage that trains may name a distributed strategy; the backend's training support (declared
    once, on the finetune row) must cover it, or training would silently run in one process."""
    training = getattr(stage, "training", None)
    if training is None or training.distributed.value == "none" or isinstance(stage, FineTuneSpec):
        return []
    if caps.support("finetune", "training.distributed", training.distributed.value).value != "unsupported":
        return []
    return [Problem(f"stages[{index}].training.distributed", training.distributed.value,
                    f"{caps.backend} trains in one process only (its capability table claims no "
                    f"finetune.training.distributed={training.distributed.value})")]


def _data_need(stage: Any) -> Optional[str]:
    if isinstance(stage, QuantizationSpec):
        return {QuantMode.static: "calibration", QuantMode.qat: "train"}.get(stage.mode)
    if isinstance(stage, (DistillationSpec, FineTuneSpec)):
        return "train"
    if isinstance(stage, PruningSpec) and stage.trains:
        return "train"
    return None


def _has(data: Optional[TaskData], need: str) -> bool:
    if data is None:
        return False
    return data.train is not None or (need == "calibration" and data.calibration is not None)


def _metrics(adapter: Adapter, model: Any, evaluate: Optional[Evaluate], data: Optional[TaskData]) -> dict:
    if evaluate is not None:
        value = evaluate(model)
        return dict(value) if isinstance(value, dict) else {"metric": float(value)}
    if data is not None and data.evaluation is not None:
        return evaluate_task(adapter, model, data)  # accuracy, or perplexity for causal-lm (`unicompress.tasks`)
    return {}


def _refuse_task_mismatch(adapter: Adapter, model: Any, recipe: Recipe, data: Optional[TaskData],
                          evaluate: Optional[Evaluate]) -> None:
    """Refuse data whose task the model's outputs do not fit (one run on one row): causal-lm data on a model
    without [batch, seq, vocab] logits, classification labels read against a causal LM's per-token logits."""
    if data is None:
        return
    evaluating = recipe.evaluate and evaluate is None and data.evaluation is not None
    training = any(_data_need(stage) == "train" for stage in recipe.stages)
    problems = task_problems(adapter, model, data, uses_labels=evaluating or training)
    if problems:
        raise InvalidDataError("; ".join(problems) + ". Nothing was run.")


def _progress(enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return lambda desc, total: tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


#: one compress() at a time per process: native toolkits keep process-wide state (torch.export's dispatch
#: mode, global RNGs, TensorFlow's default graph), so concurrent calls are serialised rather than corrupted
_COMPRESS_LOCK = threading.RLock()
#: where a compressed model is saved when writing it to the recipe's export fails (default: the temp folder)
RECOVERY_DIR_ENV = "UNICOMPRESS_RECOVERY_DIR"


def compress(model: Any, recipe: RecipeLike, data: Optional[TaskData] = None, *, backend: Optional[str] = None,
             teacher: Any = None, evaluate: Optional[Evaluate] = None, inplace: bool = False,
             progress: bool = True, export_example: Optional[Inputs] = None,
             structure: Union[StructureDeclaration, dict, None] = None, judge: bool = True) -> CompressionResult:
    """Run a recipe's stages on a copy of `model` and return the compressed model with its report.

    Nothing is touched until the backend's capabilities, the data and every stage's plan (which layers,
    heads and FFN pairs; `unicompress.planner`) are checked; stages then run on a copy, so a failing stage
    leaves `model` unchanged (unless `inplace=True`, which skips the copy and gives up that guarantee).
    Refused before work as well: NaN/inf weights or model outputs, unusable data (`unicompress.data.checks`),
    an export folder that cannot be written, and an ONNX export without example inputs.
    After each stage the judge (`unicompress.judge`) checks the spec's post-conditions on the result and
    raises JudgeError when one fails (`judge=False` skips it). `structure` declares where heads and FFN
    pairs are when discovery cannot know it (the recipe's ``structure:`` otherwise).

    A failure after the stages (export, evaluation) raises ExportError with the compressed model in
    ``exc.result`` and a copy saved under ``exc.recovery`` (``$UNICOMPRESS_RECOVERY_DIR`` or the temp folder).
    Threads: calls are serialised by one process-wide lock (a second call waits for the first to finish).

    Example::

        result = compress(model, "examples/int8_static.yaml", data=task_data)
        print(result.report.to_text())
    """
    with _COMPRESS_LOCK:
        return _compress(model, recipe, data, backend=backend, teacher=teacher, evaluate=evaluate, inplace=inplace,
                         progress=progress, export_example=export_example, structure=structure, judge=judge)


def _compress(model: Any, recipe: RecipeLike, data: Optional[TaskData], *, backend: Optional[str], teacher: Any,
              evaluate: Optional[Evaluate], inplace: bool, progress: bool, export_example: Optional[Inputs],
              structure: Union[StructureDeclaration, dict, None], judge: bool) -> CompressionResult:
    recipe = as_recipe(recipe)
    adapter = resolve_backend(backend or recipe.backend, model)
    if not adapter.is_model(model):
        raise ModelNotSupportedError(f"backend {adapter.name!r} cannot take a {type(model).__module__}."
                                     f"{type(model).__qualname__}; use backend: auto or the matching backend")
    declared = validate_data(structure, StructureDeclaration) if isinstance(structure, dict) else \
        structure if structure is not None else recipe.structure
    found = resolve_structure(adapter, model, declared)
    check_plan(adapter, model, recipe, data, found, teacher=teacher)
    example = _refuse_unwritable_export(adapter, model, recipe, data, export_example)

    input_weights = adapter.weights(model)
    _refuse_non_finite_weights(input_weights)
    baseline = _deploy_baseline(adapter, model, recipe, example)  # the user's model, before any stage
    check_task_data(data)
    record = reproducibility_record(adapter, recipe, input_weights, data)
    probe = _probe_inputs(data, export_example) if judge else None
    _refuse_non_finite_outputs(adapter, model, probe)
    _refuse_task_mismatch(adapter, model, recipe, data, evaluate)
    metrics_before = _metrics(adapter, model, evaluate, data) if recipe.evaluate else {}
    layers_before = adapter.describe(model)
    working = model if inplace else adapter.copy(model)
    bar_factory = _progress(progress)
    stage_reports = []
    stats = layers_before
    for i, stage in enumerate(recipe.stages):
        plan = plan_stage(adapter, working, stage, i, resolve_structure(adapter, working, declared))
        ctx = StageContext(progress=bar_factory, stage_index=i, plan=plan)
        if isinstance(stage, DistillationSpec):
            ctx.teacher = teacher if teacher is not None else adapter.copy(working)
        snapshot = before_stage(adapter, working, stage, probe) if judge else None
        t0 = time.perf_counter()
        try:
            working = adapter.apply(working, stage, data, ctx)
        except UnicompressError:
            raise
        except Exception as exc:
            raise StageError(i, stage.technique, exc) from exc
        seconds = time.perf_counter() - t0
        stats = adapter.describe(working)
        checks = judge_stage(adapter, working, stage, plan, snapshot, stats, probe) if judge else []
        if any(c.passed is False for c in checks):
            raise JudgeError(i, stage.technique, checks)
        stage_reports.append(StageReport(i, stage.technique, seconds, ctx.history,
                                         params=sum(s.params for s in stats), nonzero=sum(s.nonzero for s in stats),
                                         nbytes=sum(s.nbytes for s in stats),
                                         checks=[c.to_dict() for c in checks], plan=plan_summary(plan)))

    report = CompressionReport(recipe=recipe.name, backend=adapter.name, layers_before=layers_before,
                               layers_after=stats, stages=stage_reports,  # the last stage's describe()
                               metrics_before=metrics_before,
                               structure=found.summary() if found is not None else "no Transformer structure found",
                               record=record)
    result = CompressionResult(working, report, adapter.name)
    step = "export"
    try:  # every stage ran: from here on a failure must not lose the compressed model
        result.exports = _export(adapter, working, recipe, example, report.export_notes)
        report.exports = {k: str(v) for k, v in result.exports.items()}
        if baseline is not None:
            step = "deployment measurement"
            from .deploy.targets import measure_targets

            report.exports["baseline_onnx"] = str(baseline)
            report.deployment = measure_targets(recipe.export.deploy, result.exports, baseline, example)
        step = "evaluation"
        report.metrics_after = _metrics(adapter, working, evaluate, data) if recipe.evaluate else {}
    except Exception as exc:  # noqa: BLE001 - whatever failed, the model is saved and the cause chained
        if example is None:
            example = _probe_inputs(data, export_example)  # lets the copy be ONNX when there is no native format
        raise _kept(adapter, result, recipe, example, step, exc) from exc
    return result


def _refuse_unwritable_export(adapter: Adapter, model: Any, recipe: Recipe, data: Optional[TaskData],
                              given: Optional[Inputs]) -> Optional[Inputs]:
    """Check before the stages what export will need; returns the ONNX example inputs (None without ONNX)."""
    problems = export_problems(recipe, adapter.name)
    if problems:
        raise OutputPathError("the recipe's export could not be written, so nothing was run:\n"
                              + "\n".join(f"  - {p}" for p in problems))
    if recipe.export is None or ExportFormat.onnx not in recipe.export.formats:
        return None
    _refuse_embeddings_without_tables(adapter, model, recipe)
    if recipe.export.optimize != "none":  # fusion needs attention heads: refused here, before any stage
        from .onnx.fusion import fusion_heads

        fusion_heads(resolve_structure(adapter, model, recipe.structure))
    try:
        return _example_inputs(data, given)
    except StopIteration:
        raise MissingDataError("export: onnx needs example inputs, but the data yielded no batch; pass "
                               "export_example= or data with batches") from None


def _deploy_baseline(adapter: Adapter, model: Any, recipe: Recipe, example: Optional[Inputs]) -> Optional[Path]:
    """With ``export.deploy``: the runtimes are checked (installed) and the uncompressed model is exported as the
    FP32 reference of the deployment table, before any stage; None without ``deploy``."""
    deploy = recipe.export.deploy if recipe.export is not None else None
    if deploy is None:
        return None
    from .deploy.runtimes import resolve_runtimes
    from .deploy.targets import export_baseline

    resolve_runtimes(list(dict.fromkeys(["onnxruntime", *deploy.runtimes])))  # missing packages: pip command, now
    return export_baseline(adapter, model, export_targets(recipe, adapter.name)["onnx"], example,
                           recipe.export.opset)


def _refuse_embeddings_without_tables(adapter: Adapter, model: Any, recipe: Recipe) -> None:
    """Integer embeddings asked for a model whose layers hold no embedding at all: refused before work (a model
    with embedding layers but no Gather table in its export is refused after the export, the model kept)."""
    if recipe.export.embeddings == "float":
        return
    from .onnx.embeddings import EmbeddingError

    kinds = sorted({layer.kind for layer in adapter.layers(model)})
    if "embedding" not in kinds:
        raise EmbeddingError(f"export.embeddings is {recipe.export.embeddings}, but the model has no embedding "
                             f"layer to quantize (its layer kinds: {', '.join(kinds) or 'none'}); nothing was run. "
                             "Use embeddings: float for this model")


def _refuse_non_finite_weights(weights: dict[str, np.ndarray]) -> None:
    bad = non_finite_tensors(weights)
    if bad:
        raise NonFiniteWeightsError(f"{len(bad)} layer(s) hold NaN or inf weights, from which every stage would "
                                    f"compute NaN scales and masks: {', '.join(bad[:8])}"
                                    f"{' ...' if len(bad) > 8 else ''}. Nothing was run; load finite weights.")


def _refuse_non_finite_outputs(adapter: Adapter, model: Any, probe: Optional[Inputs]) -> None:
    """The input model's outputs on the judge's probe rows: NaN/inf there (e.g. from a LayerNorm weight the
    layer list does not cover) would fail every stage's judge after the work, so refuse now."""
    if probe is None:
        return
    out = np.asarray(adapter.run(model, probe))
    if out.dtype.kind in "fc" and not np.isfinite(out).all():
        raise NonFiniteWeightsError(f"the input model's outputs on the first {_PROBE_ROWS} example rows hold "
                                    f"{int(out.size - np.isfinite(out).sum())} NaN/inf value(s) of {out.size} (its "
                                    "weights or the data are not finite); nothing was run")


def _kept(adapter: Adapter, result: CompressionResult, recipe: Recipe, example: Optional[Inputs], step: str,
          cause: BaseException) -> ExportError:
    """The error for a failure after the stages, after saving the compressed model somewhere safe."""
    recovery, why = save_recovery_copy(adapter, result.model, recipe, example)
    where = (f"a copy was saved to {recovery}" if recovery is not None else f"no copy could be saved ({why})")
    return ExportError(f"every stage ran, but the {step} failed: {type(cause).__name__}: {cause}. The compressed "
                       f"model is kept: {where}; from Python it is exc.result.model. The input model was not "
                       "modified.", result=result, recovery=recovery)


def save_recovery_copy(adapter: Adapter, model: Any, recipe: Recipe,
                       example: Optional[Inputs] = None) -> tuple[Optional[Path], str]:
    """Save `model` into a new private folder under ``$UNICOMPRESS_RECOVERY_DIR`` (or the temp folder), in the
    backend's native format, else as ONNX; returns (what was written, or None, and why not)."""
    base = Path(os.environ.get(RECOVERY_DIR_ENV) or tempfile.gettempdir())
    try:
        base.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"unicompress-recovery-{recipe.name[:40]}-", dir=base))
    except OSError as exc:
        return None, f"no folder could be made in {base}: {exc}"
    failures = []
    try:
        return adapter.export_native(model, folder / f"{recipe.name}.{adapter.name}"), ""
    except Exception as exc:  # noqa: BLE001 - try the next format; the caller reports both
        failures.append(f"native: {type(exc).__name__}: {exc}")
    if example is not None:
        try:
            opset = recipe.export.opset if recipe.export is not None else 17
            return adapter.export_onnx(model, folder / f"{recipe.name}.onnx", example, opset), ""
        except Exception as exc:  # noqa: BLE001
            failures.append(f"onnx: {type(exc).__name__}: {exc}")
    return None, "; ".join(failures) or "no format to save it in"


_PROBE_ROWS = 4  # inputs the judge runs before and after each stage


def _probe_inputs(data: Optional[TaskData], given: Optional[Inputs]) -> Optional[Inputs]:
    """A few example inputs for the judge (the first rows of the first batch), or None when there are none."""
    try:
        x = _example_inputs(data, given)
    except (MissingDataError, StopIteration):
        return None
    if isinstance(x, dict):
        return {k: v[:_PROBE_ROWS] for k, v in x.items()}
    return x[:_PROBE_ROWS]


def _example_inputs(data: Optional[TaskData], given: Optional[Inputs]) -> Inputs:
    if given is not None:
        return given
    if data is not None:
        for source in (data.calibration, data.evaluation, data.train):
            if source is not None:
                first = next(iter(source()))
                return first[0] if isinstance(first, tuple) else first
    raise MissingDataError("export needs example inputs: pass export_example= or data with batches")


def _export(adapter: Adapter, model: Any, recipe: Recipe, example: Optional[Inputs],
            notes: Optional[list[str]] = None) -> dict[str, Path]:
    """Write the recipe's export files; `notes` receives one line per rewrite of them (integer embeddings)."""
    targets = export_targets(recipe, adapter.name)
    out: dict[str, Path] = {}
    if "onnx" in targets:
        out["onnx"] = adapter.export_onnx(model, targets["onnx"], example, recipe.export.opset)
        if recipe.export.embeddings != "float":  # framework-neutral: the ONNX file is rewritten, atomically
            from .onnx.embeddings import quantize_embeddings_file, require_tables

            embedded = quantize_embeddings_file(out["onnx"], recipe.export.embeddings, example=example)
            require_tables(embedded, out["onnx"])
            if notes is not None:
                notes.append(embedded.summary())
        if recipe.export.optimize == "ort-transformers":  # after the embeddings: EmbedLayerNorm takes float tables
            from .onnx.fusion import export_heads, fuse_file

            heads, hidden = export_heads(resolve_structure(adapter, model, recipe.structure))
            fused = fuse_file(out["onnx"], heads, hidden, example)
            if notes is not None:
                notes.append(fused.summary())
    if "native" in targets:
        out["native"] = adapter.export_native(model, targets["native"])
    return out


def _spec(cls: type, spec: Optional[SpecModel], fields: dict) -> SpecModel:
    if spec is not None and fields:
        raise TypeError("give a spec or keyword fields, not both")
    if spec is not None:
        return spec
    return validate_data({"technique": cls.model_fields["technique"].default, **fields}, cls)


def prune(model: Any, spec: Optional[PruningSpec] = None, data: Optional[TaskData] = None, *,
          backend: str = "auto", **fields: Any) -> CompressionResult:
    """Prune with a PruningSpec or its fields. Example: ``prune(model, granularity="n_m", n=2, m=4)``."""
    return compress(model, _spec(PruningSpec, spec, fields), data, backend=backend, progress=False)


def quantize(model: Any, spec: Optional[QuantizationSpec] = None, data: Optional[TaskData] = None, *,
             backend: str = "auto", **fields: Any) -> CompressionResult:
    """Quantize with a QuantizationSpec or its fields. Example: ``quantize(model, mode="dynamic")``."""
    return compress(model, _spec(QuantizationSpec, spec, fields), data, backend=backend, progress=False)


def distill(student: Any, teacher: Any, spec: Optional[DistillationSpec] = None, data: Optional[TaskData] = None,
            *, backend: str = "auto", **fields: Any) -> CompressionResult:
    """Distil `teacher` (frozen) into `student`. Example: ``distill(small, big, data=d, kinds=["response"])``."""
    return compress(student, _spec(DistillationSpec, spec, fields), data, backend=backend, teacher=teacher)


def factorize(model: Any, spec: Optional[LowRankSpec] = None, *, backend: str = "auto",
              **fields: Any) -> CompressionResult:
    """Low-rank factorise Linear layers. Example: ``factorize(model, energy=0.9)``."""
    return compress(model, _spec(LowRankSpec, spec, fields), None, backend=backend, progress=False)


def export_onnx(model: Any, path: Union[str, Path], example: Inputs, *, backend: str = "auto",
                opset: int = 17) -> Path:
    """Export any backend's model (compressed or not) to ONNX, atomically; returns the path."""
    adapter = resolve_backend(backend, model)
    with _COMPRESS_LOCK:  # tracing exporters share process-wide state with compress()
        return adapter.export_onnx(model, Path(path), example, opset)


def save_weights(model: Any, path: Union[str, Path], *, zoo: str, backend: str = "auto") -> Path:
    """Save a zoo-architecture model of any backend as a safetensors checkpoint (neutral names, atomic).

    Example: ``uc.save_weights(keras_model, "minilm-bbc.safetensors", zoo="minilm-l6")``; the file loads
    into any backend with `load_model`.
    """
    from .zoo.checkpoint import save_checkpoint

    adapter = resolve_backend(backend, model)
    return save_checkpoint(adapter.neutral_weights(model), path, zoo)


def load_model(path: Union[str, Path], *, backend: str, zoo: str = "") -> Any:
    """Build the zoo model a checkpoint describes on `backend` and load its weights.

    Example: ``paddle_model = uc.load_model("minilm-bbc.safetensors", backend="paddle")``.
    """
    from .backend.registry import get_backend
    from .zoo.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(path, zoo)
    return get_backend(backend).build_model(checkpoint.zoo, num_labels=checkpoint.config.num_labels,
                                            weights=checkpoint.weights)
