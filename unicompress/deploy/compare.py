"""Every (model file, runtime) pair timed in one run, as ratios to a reference pair, with output agreement.

Example::

    table = compare_runtimes(["fp32.onnx", "int8.onnx"], ["onnxruntime", "openvino"], batch=32)
    print(table.to_markdown()); print(table.choose(0.99).reason)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..bench import interleaved_times, median, p90, synthetic_inputs
from ..onnx.runtime import feeds_for
from ..errors import UnicompressError
from ..report import format_table, markdown_table
from .agreement import agreement, resolve_metric
from .runtimes import Loaded, Runtime, get_runtime, resolve_runtimes

PathLike = Union[str, Path]


@dataclass(frozen=True)
class PairResult:
    """One (file, runtime) pair: its latency, its speed-up on the reference pair and its output agreement."""

    file: str
    runtime: str
    version: str
    detail: str
    size_mb: float
    median_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    speedup: Optional[float] = None
    max_abs: Optional[float] = None
    cosine: Optional[float] = None
    argmax_agreement: Optional[float] = None
    agreement: Optional[float] = None  # the table's metric: argmax agreement or cosine
    reference: bool = False
    error: Optional[str] = None  # why the pair could not be loaded or run

    @property
    def label(self) -> str:
        return f"{self.runtime} on {Path(self.file).name}"

    def to_dict(self) -> dict:
        """Fields as JSON values (an infinite difference, from outputs that could not be matched, is None)."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass
class DeployTable:
    """The pairs of one run, the reference first; render with `to_markdown`/`to_text`, pick with `choose`."""

    rows: list[PairResult]
    batch: int
    length: int
    threads: int
    runs: int
    warmup: int
    metric: str  # "argmax" or "cosine"
    tolerance: float
    inputs: str = "synthetic"  # or "given"
    notes: list[str] = field(default_factory=list)

    @property
    def reference(self) -> PairResult:
        return next(r for r in self.rows if r.reference)

    @property
    def metric_label(self) -> str:
        return "argmax agreement" if self.metric == "argmax" else "cosine"

    def format_agreement(self, value: Optional[float]) -> str:
        if value is None:
            return "-"
        return f"{value:.1%}" if self.metric == "argmax" else f"{value:.5f}"

    def choose(self, tolerance: Optional[float] = None) -> Any:
        """`choose(self, tolerance)`: the fastest pair that keeps agreement, with the reason."""
        from .choose import choose

        return choose(self, tolerance)

    def _cells(self) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
        header = ("file", "runtime", "MB", "median ms", "p90 ms", "speed-up", "max |diff|", "cosine",
                  *(("argmax agree",) if self.metric == "argmax" else ()), "note")
        rows = []
        for r in self.rows:
            fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
            note = "reference" if r.reference else (f"failed: {r.error}" if r.error else "")
            rows.append((Path(r.file).name, f"{r.runtime} {r.version}".strip(), f"{r.size_mb:.1f}",
                         fmt(r.median_ms, ".1f"), fmt(r.p90_ms, ".1f"),
                         "-" if r.speedup is None else f"{r.speedup:.2f}x", fmt(r.max_abs, ".2g"),
                         fmt(r.cosine, ".5f"),
                         *((self.format_agreement(r.argmax_agreement),) if self.metric == "argmax" else ()), note))
        return header, rows

    def _caption(self) -> str:
        ref = self.reference
        return (f"batch {self.batch}, length {self.length}, {self.threads} thread(s), {self.runs} timed rounds "
                f"(pairs in turn) after {self.warmup} warm-up run(s), {self.inputs} inputs; ratios and agreement "
                f"against {ref.label}")

    def to_markdown(self) -> str:
        header, rows = self._cells()
        lines = [markdown_table(header, rows), "", self._caption() + "."]
        lines += [f"- {r.runtime}: {r.detail}" for r in {r.runtime: r for r in self.rows if r.detail}.values()]
        return "\n".join(lines + [f"- {n}" for n in self.notes])

    def to_text(self) -> str:
        header, rows = self._cells()
        return format_table(header, rows) + "\n" + self._caption()

    def to_dict(self) -> dict:
        choice = self.choose()
        return {"batch": self.batch, "length": self.length, "threads": self.threads, "runs": self.runs,
                "warmup": self.warmup, "metric": self.metric, "tolerance": self.tolerance, "inputs": self.inputs,
                "reference": {"file": self.reference.file, "runtime": self.reference.runtime},
                "rows": [r.to_dict() for r in self.rows], "notes": list(self.notes),
                "choice": {"file": choice.row.file, "runtime": choice.row.runtime, "reason": choice.reason}}

    def plot(self, path: PathLike) -> Optional[Path]:
        """Speed-up against agreement, one point per pair (None when matplotlib is not installed)."""
        from .plot import plot_table

        return plot_table(self, path)


class DeployError(UnicompressError):
    """The reference pair could not run, so nothing can be compared with it."""


def _union_feeds(models: Sequence[Loaded], batch: int, length: int, vocab: int) -> dict[str, np.ndarray]:
    """One set of synthetic inputs for every file: the reference's, plus inputs only other files declare."""
    feeds: dict[str, np.ndarray] = {}
    for model in models:
        extra = synthetic_inputs(model, batch, length, vocab=vocab)
        feeds.update({k: v for k, v in extra.items() if k not in feeds})
    return feeds


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def compare_runtimes(files: Sequence[PathLike], runtimes: Union[str, Sequence[str]] = ("onnxruntime", "openvino"),
                     batch: int = 32, length: int = 128, threads: int = 2, runs: int = 15, warmup: int = 2,
                     reference: Optional[tuple[str, PathLike]] = None,
                     inputs: Optional[Mapping[str, np.ndarray]] = None, tolerance: float = 0.99,
                     metric: str = "auto", vocab: int = 1000) -> DeployTable:
    """Time every (file, runtime) pair in one run and compare its outputs with the reference pair's.

    All pairs are loaded at once, then timed in interleaved rounds (one run of each pair per round) so that
    machine load falls on all alike; `speedup` is the reference's median over the pair's. The reference pair
    (default ONNX Runtime on ``files[0]``, the FP32 baseline) is added if not among the pairs. Every pair gets
    the same inputs (`inputs`, or synthetic token ids below `vocab` / images of `batch` x `length`).
    Agreement: max |diff| over all outputs, cosine of the flattened first output and, for classifiers
    (``metric="argmax"``, or ``"auto"`` on an output named like logits), the share of rows whose argmax agrees.
    With `tflite` and `paddle-inference` together, Paddle is imported first (`Runtime.import_order`). A pair that cannot
    load or run a file is kept as a row with its error; pairs whose runtime does not read that file kind
    are left out (noted). Unknown runtime names and missing packages fail before any work.
    """
    if not files:
        raise ValueError("compare_runtimes needs at least one model file")
    paths = [Path(f) for f in files]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"no model file {p}")
    ref_name, ref_file = reference if reference is not None else ("onnxruntime", paths[0])
    ref_file = Path(ref_file)
    chosen = resolve_runtimes(runtimes)
    ref_rt = get_runtime(ref_name)
    ref_rt.require()
    if not ref_rt.reads_file(ref_file):
        raise ValueError(f"the reference runtime {ref_name} does not read {ref_file.suffix} files ({ref_file})")

    pairs: list[tuple[Path, Runtime]] = [(ref_file, ref_rt)]
    notes: list[str] = []
    for path in dict.fromkeys([ref_file, *paths]):
        for rt in chosen:
            if (path, rt.name) == (ref_file, ref_rt.name):
                continue
            if not rt.reads_file(path):
                notes.append(f"{rt.name} does not read {path.suffix} files: {path.name} left out for it")
                continue
            pairs.append((path, rt))
    for rt in sorted({rt.name: rt for _, rt in pairs}.values(), key=lambda r: r.import_order):
        rt.prepare()  # frameworks in a safe order before any file loads
    versions = {rt.name: rt.version() for _, rt in pairs}

    loaded: list[Optional[Loaded]] = []
    errors: list[Optional[str]] = []
    for i, (path, rt) in enumerate(pairs):
        try:
            loaded.append(rt.load(path, threads))
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot read a file is a row, not a crash
            if i == 0:
                raise
            loaded.append(None)
            errors.append(_first_line(exc))
    feeds = (dict(inputs) if inputs is not None
             else _union_feeds([m for m in loaded if m is not None], batch, length, vocab))
    if inputs is not None and feeds:  # the table states the shape that was really run
        first = np.asarray(next(iter(feeds.values())))
        batch, length = (int(first.shape[0]) if first.ndim else 1), (int(first.shape[1]) if first.ndim > 1 else 0)
    per_pair: list[Optional[dict[str, np.ndarray]]] = [None] * len(pairs)
    outputs: list[Optional[list[np.ndarray]]] = []
    for i, model in enumerate(loaded):
        if model is None:
            outputs.append(None)
            continue
        try:  # a file that needs an input the others lack is its own row's failure
            per_pair[i] = feeds_for(model, feeds)
            outputs.append(model.run(per_pair[i]))
        except Exception as exc:  # noqa: BLE001
            if i == 0:
                hint = ("pass inputs of the model's own (e.g. one batch of its data)" if inputs is not None else
                        f"synthetic token ids are drawn below vocab={vocab}: lower it to the model's vocabulary "
                        "size (bench --vocab N) or pass real inputs")
                raise DeployError(f"the reference pair {ref_name} on {ref_file.name} could not run: "
                                  f"{_first_line(exc)}; {hint}") from exc
            outputs.append(None)
            errors[i] = _first_line(exc)
    live = [i for i, o in enumerate(outputs) if o is not None]
    times = dict(zip(live, interleaved_times([lambda m=loaded[i], f=per_pair[i]: m.run(f) for i in live],
                                             runs, max(warmup - 1, 0))))  # the agreement run was a warm-up too

    ref_names, ref_out = loaded[0].output_names(), outputs[0]
    resolved = resolve_metric(metric, ref_names[0], ref_out[0])
    ref_ms = median(times[0])
    rows = []
    for i, (path, rt) in enumerate(pairs):
        base = dict(file=str(path), runtime=rt.name, version=versions[rt.name],
                    detail=loaded[i].detail if loaded[i] is not None else "", size_mb=_size_mb(path),
                    reference=i == 0, error=errors[i])
        if outputs[i] is None:
            rows.append(PairResult(**base))
            continue
        agree = agreement(loaded[i].output_names(), outputs[i], ref_names, ref_out, resolved == "argmax")
        value = agree.argmax if resolved == "argmax" else agree.cosine
        if agree.note:
            base["error"] = agree.note
        ms = median(times[i])
        rows.append(PairResult(**base, median_ms=ms, p90_ms=p90(times[i]), speedup=ref_ms / ms, max_abs=agree.max_abs,
                               cosine=agree.cosine, argmax_agreement=agree.argmax, agreement=value))
    return DeployTable(rows, batch, length, threads, runs, warmup, resolved, tolerance,
                       "given" if inputs is not None else "synthetic", notes)


def _size_mb(path: Path) -> float:
    """The model's bytes on disk: an ONNX file with its external data files, an IR's .xml with its .bin, a
    Paddle program with its .pdiparams."""
    companions: set[Path] = set()
    if path.suffix.lower() == ".xml":
        companions.add(path.with_suffix(".bin"))
    elif path.suffix.lower() in (".json", ".pdmodel"):
        companions.add(path.with_suffix(".pdiparams"))
    elif path.suffix.lower() == ".onnx":
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        for t in graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                companions.update(path.parent / e.value for e in t.external_data if e.key == "location")
    return (path.stat().st_size + sum(c.stat().st_size for c in companions if c.is_file())) / 1e6


def deploy_report(onnx_path: PathLike, baseline_path: Optional[PathLike] = None,
                  runtimes: Union[str, Sequence[str]] = ("onnxruntime", "openvino"), batch: int = 32,
                  length: int = 128, threads: int = 2, runs: int = 15,
                  inputs: Optional[Mapping[str, np.ndarray]] = None, tolerance: float = 0.99,
                  metric: str = "auto", warmup: int = 2, vocab: int = 1000) -> DeployTable:
    """The deployment table of a recipe's export: `onnx_path` on each runtime, against ONNX Runtime on the
    baseline file (the uncompressed export) when given, else against ONNX Runtime on `onnx_path` itself.

    This is the one call behind a recipe's ``export: {runtimes: [...]}``: pass the exported file, the FP32
    export if there is one, the recipe's runtimes and the data's example inputs (``inputs``: name -> array,
    e.g. one evaluation batch; synthetic token ids otherwise). ``table.choose()`` names the fastest pair within
    `tolerance` and why; ``table.to_markdown()`` / ``to_dict()`` go into the report.
    Example: ``deploy_report("out/model-int8.onnx", "out/model-fp32.onnx", ["onnxruntime", "openvino"])``.
    """
    files = [Path(baseline_path), Path(onnx_path)] if baseline_path is not None else [Path(onnx_path)]
    return compare_runtimes(files, runtimes, batch, length, threads, runs, warmup, ("onnxruntime", files[0]),
                            inputs, tolerance, metric, vocab)
