"""Run an example recipe end to end on a chosen backend: before/after table, Markdown report, PNG plot.

    python examples/run_example.py examples/int8_static.yaml                  # the recipe's backend (torch)
    python examples/run_example.py examples/sparsity_2of4.yaml --backend tensorflow
    python examples/run_example.py examples/low_rank.yaml --smoke            # tiny-bert, a few steps, seconds
    python examples/run_example.py examples/vit_mnist.yaml --backend paddle  # the image path (tiny-vit, MNIST-5k)
    python examples/run_example.py --matrix                                  # which example runs where today

What it does: builds the recipe's model with the backend (`adapter.build_model`, fine-tuned weights
from examples/.cache, built by finetune_minilm.py on first use), loads the recipe's dataset
(`unicompress.data.load_dataset`), runs `unicompress.compress`, exports the model before and after
to ONNX and measures both in ONNX Runtime (accuracy on the test split, file size, latency at batch 1
and 32 with 2 intra-op threads). It prints the table and writes, under --out:
example.md (the table + the core's report), example.json, example.png (accuracy against size and
latency), and the core's report.md/report.json/report.png.

`--smoke` swaps the model for the zoo's tiny-bert (inputs folded to its 128-token vocabulary and
32 positions), keeps 64 training and 32 test articles and cuts every training stage to 4 steps:
it checks the plumbing of a recipe in seconds, its accuracy means nothing.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
#: every scenario of the examples, in the order tables show them
EXAMPLE_FILES = ("int8_static.yaml", "sparsity_2of4.yaml", "prune_heads_ffn.yaml", "distill_6to3.yaml",
                 "low_rank.yaml", "distill_prune_quantize.yaml", "vit_mnist.yaml", "int8_deploy.yaml")
BACKENDS = ("torch", "tensorflow", "paddle")
SMOKE_DATA = {"max_length": 32, "vocab_size": 128, "max_train": 64, "max_eval": 32}
SMOKE_IMAGES = {"max_train": 64, "max_eval": 32}
SMOKE_STEPS = 4


def _load_module(name: str, path: Path) -> Any:
    """Import a sibling script as a module (examples/ and benchmarks/ are folders, not packages)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


measure = _load_module("unicompress_bench_measure", ROOT / "benchmarks" / "measure.py")
finetune_minilm = _load_module("unicompress_example_finetune", EXAMPLES / "finetune_minilm.py")
train_vit_mnist = _load_module("unicompress_example_train_vit", EXAMPLES / "train_vit_mnist.py")


# ---- recipes ---------------------------------------------------------------------------------------
def example_paths() -> list[Path]:
    """The example recipe files."""
    return [EXAMPLES / name for name in EXAMPLE_FILES]


def load_example(path: Path | str, backend: Optional[str] = None, smoke: bool = False):
    """Load a recipe, optionally with another backend and shrunk for a smoke run. Returns a Recipe."""
    from unicompress import load_recipe

    recipe = load_recipe(Path(path))
    if backend is not None or smoke:
        data = recipe.model_dump(mode="json")
        if backend is not None:
            data["backend"] = backend
        if smoke:
            data = smoke_data(data)
        recipe = load_recipe(data)
    return recipe


def smoke_data(data: dict) -> dict:
    """The plain data of a recipe made tiny: tiny-bert and a few articles (a ViT recipe keeps tiny-vit,
    untrained, and a few digits), SMOKE_STEPS steps per training stage."""
    data = json.loads(json.dumps(data))  # deep copy
    data["name"] = data["name"] + "-smoke"
    if data["model"].get("zoo") == "tiny-vit":
        data["model"] = {"zoo": "tiny-vit", "kwargs": data["model"].get("kwargs", {})}
    else:
        data["model"] = {"zoo": "tiny-bert", "kwargs": {"num_labels": 5}}
    if data.get("data", {}).get("dataset") == "bbc-news":
        data["data"]["kwargs"] = {**data["data"].get("kwargs", {}), **SMOKE_DATA}
    if data.get("data", {}).get("dataset") == "mnist-5k":
        data["data"]["kwargs"] = {**data["data"].get("kwargs", {}), **SMOKE_IMAGES}
    for stage in data["stages"]:
        training = stage.get("training")
        if training:
            training["steps"] = min(training["steps"], SMOKE_STEPS)
            training["warmup_steps"] = min(training.get("warmup_steps", 0), 1)
            training["log_every"] = 1
        schedule = stage.get("schedule")
        if schedule and schedule.get("kind") == "polynomial":
            schedule.update(begin_step=0, end_step=min(schedule["end_step"], SMOKE_STEPS))
        student = stage.get("student")
        if student:  # tiny-bert has 2 layers: keep one
            stage["student"] = {"num_layers": 1}
            stage["layer_map"] = None
        if stage.get("technique") == "low_rank" and stage.get("rank"):
            stage["rank"] = min(stage["rank"], 8)
        if stage.get("calibration"):
            stage["calibration"]["num_batches"] = min(stage["calibration"]["num_batches"], 2)
    return data


def resolve_path(path: str) -> Path:
    """A recipe path: as given when it exists (or is absolute), else relative to the repository root."""
    p = Path(os.path.expanduser(path))
    if p.is_absolute() or p.exists():
        return p
    return ROOT / p


# ---- model and data --------------------------------------------------------------------------------
def prepare(recipe, build_missing: bool = True, progress: bool = True):
    """(adapter, model, data) for a recipe: its backend builds its zoo model, `load_dataset` its data.

    A missing weights file that is one of the examples' own checkpoints is built first: the fine-tuned
    MiniLM (finetune_minilm.py) or the trained ViT (train_vit_mnist.py), in the backend it names.
    """
    from unicompress.backend import get_backend
    from unicompress.data import load_dataset
    from unicompress.zoo.bert import load_safetensors

    if recipe.backend == "auto":
        raise SystemExit("name a backend: --backend torch|tensorflow|paddle")
    adapter = get_backend(recipe.backend)
    data = load_dataset(recipe.data.dataset, **recipe.data.kwargs) if recipe.data else None
    kwargs = dict(recipe.model.kwargs)
    if data is not None and data.num_labels:
        kwargs.setdefault("num_labels", data.num_labels)
    if recipe.model.weights:
        path = resolve_path(recipe.model.weights_for(recipe.backend))
        if not path.exists() and build_missing:
            for builder in (finetune_minilm, train_vit_mnist):
                tuned_in = builder.backend_of_checkpoint(path)
                if tuned_in is not None:
                    builder.ensure_checkpoint(path, progress=progress, backend=tuned_in)
        kwargs["weights"] = load_safetensors(path, prefix_fix=False)
    if recipe.model.zoo is None:
        raise SystemExit("run_example.py builds zoo models only; use `unicompress run` for factory models")
    model = adapter.build_model(recipe.model.zoo, **kwargs)
    return adapter, model, data


def first_inputs(data, n: int = 32):
    """Up to `n` test inputs in one batch (for export and latency)."""
    import numpy as np

    xs, count = [], 0
    for x, _ in data.evaluation():
        xs.append(x)
        count += len(next(iter(x.values())) if isinstance(x, dict) else x)
        if count >= n:
            break
    if isinstance(xs[0], dict):
        return {k: np.concatenate([x[k] for x in xs])[:n] for k in xs[0]}
    return np.concatenate(xs)[:n]


def onnx_rows(paths: dict[str, Path], example, data, runs: int, threads: int = 2) -> dict[str, dict]:
    """Per exported file: size, test accuracy in ONNX Runtime and latency at batch 1 and 32.

    Latencies are taken batch size by batch size, the files timed in turn run by run, so that load on
    a shared machine hits every side of a ratio alike.
    """
    rows = {key: {"onnx": str(path), "onnx_mb": measure.file_mb(path),
                  "onnx_accuracy": measure.onnx_accuracy(path, data.evaluation(), threads)}
            for key, path in paths.items()}
    for batch in (1, 32):
        times = measure.onnx_latencies_ms(list(paths.values()), example, batch, threads, runs)
        for key, ms in zip(paths, times):
            rows[key][f"latency_b{batch}_ms"] = ms
    return rows


def params_of(report_totals) -> dict:
    return {"params": report_totals.params, "nonzero": report_totals.nonzero, "weight_mb": report_totals.nbytes / 1e6}


# ---- one run -----------------------------------------------------------------------------------------
def run(recipe, out: Path, runs: int = 7, progress: bool = True, build_missing: bool = True) -> dict:
    """Compress with `recipe`, measure before and after, write the report under `out`; returns the summary."""
    import unicompress as uc

    out = Path(out)
    adapter, model, data = prepare(recipe, build_missing, progress)
    if recipe.export is None or recipe.export.directory != str(out):
        recipe = uc.load_recipe({**recipe.model_dump(mode="json"),
                                 "export": {"formats": ["onnx"], "directory": str(out)}})
    example = first_inputs(data, 32)
    with measure.Timer() as timer:
        result = uc.compress(model, recipe, data, backend=recipe.backend, progress=progress,
                             export_example=measure.slice_batch(example, 2))
    before_onnx = adapter.export_onnx(model, out / "before.onnx", measure.slice_batch(example, 2))
    onnx = onnx_rows({"before": Path(before_onnx), "after": Path(result.exports["onnx"])}, example, data, runs)
    before = {"accuracy": result.report.metrics_before.get("accuracy"), **params_of(result.report.before),
              **onnx["before"]}
    after = {"accuracy": result.report.metrics_after.get("accuracy"), **params_of(result.report.after),
             **onnx["after"]}
    summary = {"recipe": recipe.name, "backend": adapter.name, "stages": [s.technique for s in recipe.stages],
               # the stages only; total_seconds adds compress()'s evaluations before/after and its export
               "compress_seconds": sum(s.seconds for s in result.report.stages), "total_seconds": timer.seconds,
               "peak_rss_mb": measure.peak_rss_mb(),
               "before": before, "after": after,
               "stage_seconds": [s.seconds for s in result.report.stages]}
    write_report(summary, result.report, out)
    return summary


# ---- report -------------------------------------------------------------------------------------------
ROWS = [  # key, label, format, ratio kind: "smaller" (before/after) or "delta" (after-before) or None
    ("accuracy", "test accuracy (framework)", "{:.4f}", "delta"),
    ("onnx_accuracy", "test accuracy (ONNX Runtime)", "{:.4f}", "delta"),
    ("params", "parameters", "{:,}", "smaller"),
    ("nonzero", "non-zero parameters", "{:,}", "smaller"),
    ("weight_mb", "weight bytes (MB, at their bit widths)", "{:.2f}", "smaller"),
    ("onnx_mb", "ONNX file (MB)", "{:.2f}", "smaller"),
    ("latency_b1_ms", "ORT latency batch 1 (ms)", "{:.2f}", "faster"),
    ("latency_b32_ms", "ORT latency batch 32 (ms)", "{:.1f}", "faster"),
]


def table_rows(summary: dict) -> list[tuple[str, str, str, str]]:
    """(quantity, before, after, change) rows of the before/after table."""
    rows = []
    for key, label, fmt, kind in ROWS:
        b, a = summary["before"].get(key), summary["after"].get(key)
        show = lambda v: "" if v is None else fmt.format(v)  # noqa: E731
        change = ""
        if b is not None and a is not None:
            if kind == "delta":
                change = f"{a - b:+.4f}"
            elif a:
                change = f"{b / a:.2f}x {'smaller' if kind == 'smaller' else 'faster'}"
        rows.append((label, show(b), show(a), change))
    rows.append(("compression time, stages only (s)", "", f"{summary['compress_seconds']:.1f}", ""))
    rows.append(("peak memory of the run (MB)", "", f"{summary['peak_rss_mb']:.0f}", ""))
    return rows


def write_report(summary: dict, report, out: Path) -> dict[str, Path]:
    """example.md/json/png plus the core's report files, all written atomically under `out`."""
    from unicompress.fileio import atomic_write_text
    from unicompress.report import markdown_table

    written = report.save(out)
    md = [f"# {summary['recipe']} on {summary['backend']}", "",
          f"Stages: {' -> '.join(summary['stages'])}. ONNX Runtime: 2 intra-op threads, median of timed runs.", "",
          markdown_table(("", "before", "after", "change"), table_rows(summary)), "",
          "![accuracy against size and latency](example.png)", "", report.to_markdown(layers=False)]
    written["example_md"] = atomic_write_text(out / "example.md", "\n".join(md))
    written["example_json"] = atomic_write_text(out / "example.json", json.dumps(summary, indent=2) + "\n")
    png = plot_tradeoff([summary], out / "example.png")
    if png is not None:
        written["example_png"] = png
    return written


def plot_tradeoff(summaries: list[dict], path: Path, title: Optional[str] = None) -> Optional[Path]:
    """Accuracy against ONNX size and against batch-32 latency: one arrow per run, from before to after."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from unicompress.fileio import atomic_path

    # colour = scenario, marker = backend: a run is found by both; grey circles are the uncompressed models
    recipes = list(dict.fromkeys(s["recipe"] for s in summaries))
    markers = {"torch": "D", "tensorflow": "s", "paddle": "^"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key, label in ((axes[0], "onnx_mb", "ONNX file size (MB)"),
                           (axes[1], "latency_b32_ms", "ORT latency, batch 32 (ms)")):
        for s in summaries:
            b, a = s["before"], s["after"]
            acc_b = b.get("onnx_accuracy", b.get("accuracy"))
            acc_a = a.get("onnx_accuracy", a.get("accuracy"))
            color = plt.cm.tab10(recipes.index(s["recipe"]) % 10)
            ax.scatter([b[key]], [acc_b], color="0.6", marker="o", zorder=3)
            ax.scatter([a[key]], [acc_a], color=color, marker=markers.get(s["backend"], "o"), zorder=3, s=36)
            ax.annotate("", xy=(a[key], acc_a), xytext=(b[key], acc_b),
                        arrowprops={"arrowstyle": "->", "color": color, "lw": 1.0, "alpha": 0.7})
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=plt.cm.tab10(i % 10), lw=2, label=r) for i, r in enumerate(recipes)]
    handles += [Line2D([], [], color="0.3", marker=m, ls="", label=b) for b, m in markers.items()
                if any(s["backend"] == b for s in summaries)]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.86, 0.5), fontsize=7, frameon=False)
    fig.suptitle(title or "accuracy against size and latency (grey: uncompressed)")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


# ---- which example runs where ---------------------------------------------------------------------------
def support_matrix(paths: Optional[list[Path]] = None, backends: tuple[str, ...] = BACKENDS
                   ) -> dict[str, dict[str, list[str]]]:
    """{example file: {backend: problems}} from each installed backend's capability table.

    An empty list means the backend declares every stage; a backend that is not installed (or cannot
    load) gets one entry saying so.
    """
    from unicompress.backend import available_backends, get_backend

    installed = set(available_backends())
    caps = {}
    for name in backends:
        if name not in installed:
            caps[name] = f"not installed (pip install -e adapters/{name})"
            continue
        try:
            caps[name] = get_backend(name).capabilities()
        except Exception as exc:  # an adapter that cannot load is reported, not fatal
            caps[name] = f"cannot load: {exc}"
    out: dict[str, dict[str, list[str]]] = {}
    for path in paths or example_paths():
        recipe = load_example(path)
        out[path.name] = {}
        for name, cap in caps.items():
            if isinstance(cap, str):
                out[path.name][name] = [cap]
            else:
                out[path.name][name] = [f"stages[{i}] {p}" for i, st in enumerate(recipe.stages)
                                        for p in cap.problems(st)]
    return out


def matrix_markdown(matrix: dict[str, dict[str, list[str]]]) -> str:
    """The support matrix as a Markdown table: 'yes' or the first problem."""
    from unicompress.report import markdown_table

    backends = list(next(iter(matrix.values())))
    rows = [(name, *["yes" if not probs else "no: " + probs[0] + (f" (+{len(probs) - 1} more)" if len(probs) > 1
                                                                   else "") for probs in per.values()])
            for name, per in matrix.items()]
    return markdown_table(("example", *backends), rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", type=Path, help="an example recipe (.yaml)")
    p.add_argument("--backend", choices=BACKENDS, help="override the recipe's backend")
    p.add_argument("--out", type=Path, help="report folder (default examples/out/<recipe file>-<backend>)")
    p.add_argument("--smoke", action="store_true", help="tiny-bert (tiny-vit untrained for the ViT recipe) and 4 steps per training stage: seconds")
    p.add_argument("--runs", type=int, default=7, help="timed ONNX Runtime runs per latency (median)")
    p.add_argument("--no-build", action="store_true", help="do not build a missing checkpoint (fine-tuned MiniLM, trained ViT)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--matrix", action="store_true", help="print which example each installed backend can run")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.matrix:
        print(matrix_markdown(support_matrix()))
        return 0
    if args.recipe is None:
        p.error("give a recipe file or --matrix")
    recipe = load_example(args.recipe, args.backend, args.smoke)
    out = args.out or EXAMPLES / "out" / f"{args.recipe.stem}{'-smoke' if args.smoke else ''}-{recipe.backend}"
    summary = run(recipe, out, runs=args.runs, progress=not args.no_progress, build_missing=not args.no_build)
    from unicompress.report import format_table

    print(f"{summary['recipe']} on {summary['backend']}")
    print(format_table(("", "before", "after", "change"), table_rows(summary)))
    print(f"\nreport: {out / 'example.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
