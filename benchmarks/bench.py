"""Benchmark every example scenario on every backend, in one run, against the uncompressed model.

    python benchmarks/bench.py --smoke                       # tiny-bert, 4 steps: seconds per scenario (CI)
    python benchmarks/bench.py --backends torch --scenarios int8_static
    python benchmarks/bench.py                               # full size: fine-tuned MiniLM on BBC News

For each (backend, scenario) a fresh worker process (so peak memory is the run's own, and TensorFlow
and Paddle never share a process) builds the recipe's model, compresses it with `unicompress.compress`
and measures the model before and after on one runtime: test accuracy (framework and ONNX Runtime),
parameters, non-zeros, ONNX file size, ONNX Runtime latency at batch 1 and 32 (length 128 at full size,
2 intra-op threads, median of --runs), peak memory and compression time. Ratios are against the
uncompressed model measured in the same worker.

Then the abstraction's cost (on by default, `--no-overhead` skips it): for each scenario,
`unicompress.compress` (evaluation and export off) against the direct native call -- the backend's
handler for each stage applied to a copy, which is exactly the toolkit call unicompress makes -- and, for
each backend, against the framework's own pruning call made by hand on the same layers (native_calls.py:
torch.nn.utils.prune, TFMOT prune_low_magnitude, Paddle ops): the same result (zeros and logits compared)
and the time ratio (median and minimum of interleaved repeats).

Writes (atomically) under --out (default benchmarks/results, or benchmarks/results/smoke):
results.json, results.md (tables) and results.png (accuracy against size and latency).
A scenario a backend does not declare is recorded as 'unsupported' with the reason, not run.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results"


sys.path.insert(0, str(ROOT / "examples"))
import native_calls  # noqa: E402
import run_example as examples  # noqa: E402  (a script folder, not a package)

measure = examples.measure
SCENARIOS = tuple(Path(name).stem for name in examples.EXAMPLE_FILES)
NATIVE_SCENARIO = "native-pruning"  # the by-hand comparison's row (one per backend)


# ---- worker: one (backend, scenario) in its own process ----------------------------------------------
def worker(backend: str, scenario: str, smoke: bool, runs: int, overhead: bool, repeats: int, rundir: Path,
           keep_onnx: bool = False) -> dict:
    """Compress one scenario and measure it (runs inside the worker process).

    The run's report (example.md/json/png, report.*) stays in `rundir`; its ONNX files are deleted
    once measured (they are large and rebuilt by any run) unless `keep_onnx` (git ignores them), so
    `--remeasure` can time them again later on a quiet machine.
    """
    recipe = examples.load_example(examples.EXAMPLES / f"{scenario}.yaml", backend, smoke)
    summary = examples.run(recipe, rundir, runs=runs, progress=False)
    for onnx_file in ([] if keep_onnx else rundir.glob("*.onnx*")):
        onnx_file.unlink()
    row = row_from_summary(backend, scenario, smoke, summary, rundir)
    if overhead:
        row["overhead"] = abstraction_overhead(recipe, repeats)
    return row


def row_from_summary(backend: str, scenario: str, smoke: bool, summary: dict, rundir: Path) -> dict:
    """A results row from one run's summary (what `run_example.run` returns and keeps as example.json)."""
    row: dict[str, Any] = {"backend": backend, "scenario": scenario, "recipe": summary.get("recipe"),
                           "smoke": smoke, "report": str(rundir / "example.md")}
    row.update(summary)
    row["ratios"] = {
        "size": measure.ratio(summary["before"]["onnx_mb"], summary["after"]["onnx_mb"]),
        "params": measure.ratio(summary["before"]["params"], summary["after"]["params"]),
        "nonzero": measure.ratio(summary["before"]["nonzero"], summary["after"]["nonzero"]),
        "latency_b1": measure.ratio(summary["before"]["latency_b1_ms"], summary["after"]["latency_b1_ms"]),
        "latency_b32": measure.ratio(summary["before"]["latency_b32_ms"], summary["after"]["latency_b32_ms"]),
        "accuracy_delta": _delta(summary["before"].get("onnx_accuracy"), summary["after"].get("onnx_accuracy")),
    }
    row["status"] = "ok"
    return row


def collect_rows(args: argparse.Namespace) -> dict:
    """Rows rebuilt from the run folders' example.json for the requested backends and scenarios, without
    running anything (after an interrupted run); the document as `run_all` makes it, minus what was not run."""
    doc = run_all(args, dry=True)
    for backend in args.backends:
        for scenario in args.scenarios:
            folder = run_dir(args, backend, scenario)
            summary_path = folder / "example.json"
            if summary_path.exists():
                row = row_from_summary(backend, scenario, args.smoke, json.loads(summary_path.read_text()), folder)
                row["collected_from"] = str(summary_path)
                doc["rows"].append(row)
    return doc


def interleaved(first, second, repeats: int) -> tuple[list[float], list[float], Any, Any]:
    """Time `first()` and `second()` alternately, `repeats` times each, and return both lists of seconds
    and the last result of each.

    Fair to both: the order alternates (AB BA AB ...) so neither always runs on a cache or allocator the
    other just warmed; earlier results are dropped and garbage is collected before each call, outside
    the timer, so each call starts from the same free memory (a model's copy is ~90 MB of fresh pages).
    """
    import gc

    times: dict[int, list[float]] = {0: [], 1: []}
    last: dict[int, Any] = {0: None, 1: None}
    funcs = (first, second)
    for i in range(repeats):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            last[which] = None
            gc.collect()
            t0 = time.perf_counter()
            last[which] = funcs[which]()
            times[which].append(time.perf_counter() - t0)
    return times[0], times[1], last[0], last[1]


def _delta(before: Optional[float], after: Optional[float]) -> Optional[float]:
    return None if before is None or after is None else after - before


def _logits(adapter, model, data) -> Any:
    import numpy as np

    x, _ = next(iter(data.evaluation()))
    return np.asarray(adapter.run(model, x))


def abstraction_overhead(recipe, repeats: int) -> dict:
    """unicompress.compress against the backend's handlers called directly on a copy (same specs, same data)."""
    import numpy as np

    import unicompress as uc
    from unicompress.backend.adapter import StageContext

    adapter, model, data = examples.prepare(recipe, build_missing=True, progress=False)
    plain = uc.load_recipe({**recipe.model_dump(mode="json"), "evaluate": False, "export": None})
    trains = any(getattr(s, "training", None) is not None and (s.technique != "pruning" or s.trains)
                 for s in plain.stages)
    n = 1 if trains else repeats

    def direct():
        working = adapter.copy(model)
        for i, stage in enumerate(plain.stages):
            ctx = StageContext(stage_index=i)
            if stage.technique == "distillation":
                ctx.teacher = adapter.copy(working)
            working = adapter.apply(working, stage, data, ctx)
        return working

    def via_unicompress():
        return uc.compress(model, plain, data, backend=adapter.name, progress=False).model

    t_direct, t_uc, out_direct, out_uc = interleaved(direct, via_unicompress, n)
    a, b = _logits(adapter, out_direct, data), _logits(adapter, out_uc, data)
    result = {"direct_s": statistics.median(t_direct), "unicompress_s": statistics.median(t_uc), "repeats": n,
              "direct_min_s": min(t_direct), "unicompress_min_s": min(t_uc),
              "max_abs_logit_diff": float(np.max(np.abs(a - b))), "same_predictions": bool((a.argmax(-1) ==
                                                                                             b.argmax(-1)).all())}
    result["time_ratio"] = result["unicompress_s"] / result["direct_s"] if result["direct_s"] else None
    result["overhead_pct"] = (result["time_ratio"] - 1) * 100 if result["time_ratio"] else None
    return result


def native_pruning(backend: str, smoke: bool, repeats: int) -> dict:
    """50% unstructured magnitude pruning: `unicompress.compress` against the framework's own pruning call
    made by hand on the same layers (native_calls.py): same zeros expected, and the time ratio."""
    import numpy as np

    import unicompress as uc

    recipe = examples.load_example(examples.EXAMPLES / "int8_static.yaml", backend, smoke)
    adapter, model, data = examples.prepare(recipe, build_missing=True, progress=False)
    spec = uc.PruningSpec(granularity="unstructured", sparsity=native_calls.SPARSITY)
    names = [layer.name for layer in spec.selector.select(adapter.layers(model)) if layer.kind == "linear"]
    plain = uc.Recipe(name="prune-50", stages=[spec], evaluate=False)  # no accuracy runs inside the timing

    def by_hand():
        return native_calls.BY_HAND[backend](model, names)

    def via_unicompress():
        return uc.compress(model, plain, data, backend=backend, progress=False).model

    t_native, t_uc, m_native, m_uc = interleaved(by_hand, via_unicompress, repeats)
    wn, wu = adapter.weights(m_native, names), adapter.weights(m_uc, names)
    same_masks = all(np.array_equal(wn[n] == 0, wu[n] == 0) for n in names)
    a, b = _logits(adapter, m_native, data), _logits(adapter, m_uc, data)
    native_s, uc_s = statistics.median(t_native), statistics.median(t_uc)
    # where the difference goes: the core calls describe() before and after the stage, and layers()
    # for the selector check; both paths copy the user's model
    parts = {}
    for label, fn in (("describe_s", lambda: adapter.describe(model)), ("layers_s", lambda: adapter.layers(model)),
                      ("copy_s", lambda: adapter.copy(model))):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        parts[label] = min(times)
    return {"spec": "pruning unstructured 50% magnitude, per layer", "native_call": native_calls.NATIVE_CALL[backend],
            "layers": len(names), "repeats": repeats,
            "native_s": native_s, "unicompress_s": uc_s, "time_ratio": uc_s / native_s,
            "native_min_s": min(t_native), "unicompress_min_s": min(t_uc),
            "min_time_ratio": min(t_uc) / min(t_native), "overhead_pct": (uc_s / native_s - 1) * 100,
            "same_masks": same_masks, "max_abs_logit_diff": float(np.max(np.abs(a - b))), "core_parts": parts}


def measure_row(backend: str, scenario: str, args: argparse.Namespace) -> dict:
    """One row of the results; a failure becomes a row with the error (one failing scenario hides no other)."""
    try:
        if scenario == NATIVE_SCENARIO:
            row = {"backend": backend, "scenario": scenario, "status": "ok",
                   "native_comparison": native_pruning(backend, args.smoke, args.native_repeats)}
        else:
            row = worker(backend, scenario, args.smoke, args.runs, not args.no_overhead, args.overhead_repeats,
                         run_dir(args, backend, scenario), keep_onnx=args.keep_onnx)
    except Exception as exc:
        import traceback
        row = {"backend": backend, "scenario": scenario, "status": "failed",
               "error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-4000:]}
    row["worker_peak_rss_mb"] = measure.peak_rss_mb()  # includes the overhead timings after the run
    row.setdefault("peak_rss_mb", row["worker_peak_rss_mb"])
    return row


def _worker_main(args: argparse.Namespace) -> int:
    from unicompress.fileio import atomic_write_text

    row = measure_row(args.backend, args.scenario, args)
    atomic_write_text(Path(args.workdir) / "row.json", json.dumps(row, indent=2, default=str))
    return 0


# ---- parent: plan, spawn workers, collect, write --------------------------------------------------------
def capability_problems(backend: str, scenario: str) -> Optional[str]:
    """Why `backend` cannot run `scenario` (None when it declares every stage)."""
    matrix = examples.support_matrix([examples.EXAMPLES / f"{scenario}.yaml"], (backend,))
    problems = matrix[f"{scenario}.yaml"][backend]
    return "; ".join(problems) if problems else None


def run_dir(args: argparse.Namespace, backend: str, scenario: str) -> Path:
    """Where one run's report is kept: <out>/runs/<backend>-<scenario>."""
    return Path(args.out) / "runs" / f"{backend}-{scenario}"


def run_one(backend: str, scenario: str, args: argparse.Namespace) -> dict:
    """Spawn a worker for one (backend, scenario) and return its row."""
    with tempfile.TemporaryDirectory(prefix="uc-bench-") as tmp:
        if args.in_process:  # tests and debugging: no isolation, peak memory is this process's
            t0 = time.perf_counter()
            row = measure_row(backend, scenario, args)
            row["wall_s"] = time.perf_counter() - t0
            return row
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--backend", backend,
               "--scenario", scenario, "--workdir", tmp, "--out", str(args.out), "--runs", str(args.runs),
               "--overhead-repeats", str(args.overhead_repeats), "--native-repeats", str(args.native_repeats)]
        cmd += ["--smoke"] if args.smoke else []
        cmd += ["--no-overhead"] if args.no_overhead else []
        cmd += ["--keep-onnx"] if args.keep_onnx else []
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TF_USE_LEGACY_KERAS": "1",
               "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": str(args.threads)}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        row_path = Path(tmp) / "row.json"
        if row_path.exists():
            row = json.loads(row_path.read_text())
        else:
            row = {"backend": backend, "scenario": scenario, "status": "failed",
                   "error": f"worker exited {proc.returncode}: {proc.stderr[-1500:]}"}
        row["wall_s"] = time.perf_counter() - t0
    return row


def run_all(args: argparse.Namespace, dry: bool = False) -> dict:
    """Every requested (backend, scenario), then each backend's by-hand pruning comparison; returns the
    results document (`dry`: the document's frame only, nothing run)."""
    rows = []
    for backend in ([] if dry else args.backends):
        for scenario in args.scenarios:
            reason = capability_problems(backend, scenario)
            if reason is not None:
                rows.append({"backend": backend, "scenario": scenario, "status": "unsupported", "reason": reason})
                print(f"[bench] {backend:10s} {scenario:24s} unsupported: {reason[:100]}", flush=True)
                continue
            row = run_one(backend, scenario, args)
            rows.append(row)
            print(f"[bench] {backend:10s} {scenario:24s} {row['status']} ({row.get('wall_s', 0):.0f} s)"
                  + (f": {row.get('error', '')[:200]}" if row["status"] != "ok" else ""), flush=True)
    from unicompress.backend import available_backends

    native = {}
    for backend in ([] if dry or args.no_overhead else args.backends):
        if backend in available_backends():
            native[backend] = run_one(backend, NATIVE_SCENARIO, args)
            n = native[backend].get("native_comparison") or {}
            print(f"[bench] {backend:10s} {NATIVE_SCENARIO:24s} {native[backend]['status']}"
                  + (f": ratio {n['time_ratio']:.3f} (min {n['min_time_ratio']:.3f})" if n else
                     f": {native[backend].get('error', '')[:200]}"), flush=True)
    return {"smoke": args.smoke, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "threads": args.threads},
            "settings": {"runs": args.runs, "ort_intra_op_threads": 2, "batches": [1, 32],
                         "sequence_length": 32 if args.smoke else 128},
            "rows": rows, "native_comparisons": native}


def markdown(doc: dict) -> str:
    """The results as Markdown tables: measurements, ratios, and the abstraction's cost."""
    from unicompress.report import markdown_table

    out = [f"# unicompress benchmarks{' (smoke: tiny-bert, accuracy meaningless)' if doc['smoke'] else ''}", "",
           f"Created {doc['created']} on {doc['machine']['platform']} ({doc['machine']['cpu_count']} CPUs). "
           f"ONNX Runtime, {doc['settings']['ort_intra_op_threads']} intra-op threads, median of "
           f"{doc['settings']['runs']} runs, sequence length {doc['settings']['sequence_length']}. Ratios are "
           "against the uncompressed model measured in the same worker.", ""]
    again = [f"{r['backend']}/{r['scenario']}" for r in doc["rows"] if r.get("latency_remeasured")]
    if again:
        at = max(r["latency_remeasured"]["at"] for r in doc["rows"] if r.get("latency_remeasured"))
        out += [f"Latencies of {', '.join(again)} were re-timed from the kept ONNX files (`--remeasure`, last "
                f"{at}), before and after in turn, on a quieter machine than the compression run had.", ""]
    rows = []
    for r in doc["rows"]:
        if r["status"] != "ok":
            rows.append((r["backend"], r["scenario"], r["status"] + ": " + (r.get("reason") or r.get("error", ""))[:90],
                         *[""] * 8))
            continue
        b, a, q = r["before"], r["after"], r["ratios"]
        rows.append((r["backend"], r["scenario"], "ok",
                     f"{b['onnx_accuracy']:.4f} -> {a['onnx_accuracy']:.4f}",
                     f"{b['params']:,} -> {a['params']:,}",
                     f"{b['onnx_mb']:.1f} -> {a['onnx_mb']:.1f} ({q['size']:.2f}x)",
                     f"{b['latency_b1_ms']:.2f} -> {a['latency_b1_ms']:.2f} ({q['latency_b1']:.2f}x)",
                     f"{b['latency_b32_ms']:.1f} -> {a['latency_b32_ms']:.1f} ({q['latency_b32']:.2f}x)",
                     f"{r['compress_seconds']:.1f}", f"{r['peak_rss_mb']:.0f}",
                     _overhead_cell(r.get("overhead"))))
    out.append(markdown_table(("backend", "scenario", "status", "accuracy (ORT)", "parameters", "ONNX MB",
                               "latency b1 ms", "latency b32 ms", "compress s", "peak MB", "vs direct call"), rows))
    native = doc.get("native_comparisons") or {}
    ok = {b: r["native_comparison"] for b, r in native.items() if r.get("status") == "ok"}
    if ok:
        out += ["", "## unicompress against each framework's own pruning call made by hand", "",
                markdown_table(("backend", "spec", "called by hand", "layers", "by hand s (median / min)",
                                "unicompress s (median / min)", "time ratio (median / min)", "same masks",
                                "max |logit diff|", "describe() ms"),
                               [(b, n["spec"], n["native_call"],
                                 str(n["layers"]), f"{n['native_s']:.4f} / {n['native_min_s']:.4f}",
                                 f"{n['unicompress_s']:.4f} / {n['unicompress_min_s']:.4f}",
                                 f"{n['time_ratio']:.3f} / {n['min_time_ratio']:.3f}", str(n["same_masks"]),
                                 f"{n['max_abs_logit_diff']:.2e}", f"{n['core_parts']['describe_s'] * 1e3:.1f}")
                                for b, n in ok.items()]),
                "", "Medians and minima of interleaved runs (by hand and unicompress alternate, garbage collected "
                "before each). unicompress adds its checks, a describe() of the model before and after the stage "
                "(last column) and an achieved-sparsity check; both paths copy the user's model."]
    for b, r in native.items():
        if r.get("status") != "ok":
            out += ["", f"Native comparison on {b} failed: {r.get('error', '')[:300]}"]
    out += ["", "'vs direct call': unicompress.compress (evaluation and export off) against the backend's stage "
            "handlers applied to a copy -- the same native toolkit calls without the core's checks, copies "
            "and per-stage descriptions; time ratio of medians / of minima (same result?). On a shared machine the "
            "minima are the steadier estimate of the intrinsic cost.", ""]
    return "\n".join(out)


def _overhead_cell(o: Optional[dict]) -> str:
    if not o:
        return ""
    same = "same" if o["max_abs_logit_diff"] <= 1e-5 else f"diff {o['max_abs_logit_diff']:.1e}"
    mins = o["unicompress_min_s"] / o["direct_min_s"] if o.get("direct_min_s") else float("nan")
    return f"{o['time_ratio']:.3f}x / {mins:.3f}x ({same})"


def remeasure_latency(doc: dict, onnx_root: Path, runs: int, threads: int) -> dict:
    """Time the kept ONNX files of every measured row again (before and after in turn, run by run) and
    replace that row's latencies and ratios; rows whose files are gone keep theirs.

    Compression trains for minutes; on a shared machine its neighbours' load lands on the latency
    measured right after it. Re-timing the same files when the machine is quiet gives steadier ratios.
    The row records when and how (``latency_remeasured``).
    """
    import datetime

    from unicompress.data import load_dataset

    inputs: dict[tuple, Any] = {}
    for row in doc["rows"]:
        folder = Path(onnx_root) / f"{row['backend']}-{row['scenario']}"
        before = folder / "before.onnx"
        after = [f for f in folder.glob("*.onnx") if f.name != "before.onnx"]
        if row["status"] != "ok" or not before.exists() or len(after) != 1:
            continue
        recipe = examples.load_example(examples.EXAMPLES / f"{row['scenario']}.yaml", row["backend"], doc["smoke"])
        key = (recipe.data.dataset, tuple(sorted(recipe.data.kwargs.items())))
        if key not in inputs:
            inputs[key] = examples.first_inputs(load_dataset(recipe.data.dataset, **recipe.data.kwargs), 32)
        for batch in (1, 32):
            b, a = measure.onnx_latencies_ms([before, after[0]], inputs[key], batch, threads, runs)
            row["before"][f"latency_b{batch}_ms"], row["after"][f"latency_b{batch}_ms"] = b, a
            row["ratios"][f"latency_b{batch}"] = measure.ratio(b, a)
        row["latency_remeasured"] = {"at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                     "runs": runs, "threads": threads}
        print(f"[bench] {row['backend']:10s} {row['scenario']:24s} latency b32 {row['ratios']['latency_b32']:.2f}x "
              f"b1 {row['ratios']['latency_b1']:.2f}x (re-measured)", flush=True)
    return doc


def merge_previous(doc: dict, path: Path) -> dict:
    """`doc` with the rows of an earlier results.json kept where this run did not measure that
    (backend, scenario) again -- so scenarios can be measured one command at a time."""
    if not path.exists():
        return doc
    old = json.loads(path.read_text())
    if old.get("smoke") != doc["smoke"]:
        return doc
    fresh = {(r["backend"], r["scenario"]) for r in doc["rows"]}
    kept = [r for r in old.get("rows", []) if (r["backend"], r["scenario"]) not in fresh]
    order = {name: i for i, name in enumerate(SCENARIOS)}
    rows = sorted(kept + doc["rows"], key=lambda r: (r["backend"], order.get(r["scenario"], len(order))))
    merged = {**doc, "rows": rows}
    merged["native_comparisons"] = {**(old.get("native_comparisons") or {}), **doc["native_comparisons"]}
    return merged


def write_results(doc: dict, out: Path) -> dict[str, Path]:
    """results.json, results.md and results.png under `out`, each written atomically."""
    from unicompress.fileio import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    written = {"json": atomic_write_text(out / "results.json", json.dumps(doc, indent=2, default=str) + "\n"),
               "markdown": atomic_write_text(out / "results.md", markdown(doc))}
    ok = [r for r in doc["rows"] if r["status"] == "ok"]
    if ok:
        summaries = [{"recipe": r["scenario"], "backend": r["backend"], "before": r["before"], "after": r["after"]}
                     for r in ok]
        png = examples.plot_tradeoff(summaries, out / "results.png",
                                     "unicompress benchmarks" + (" (smoke)" if doc["smoke"] else ""))
        if png is not None:
            written["png"] = png
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny-bert, 4 steps, few articles: seconds per scenario")
    p.add_argument("--backends", type=lambda s: s.split(","), default=list(examples.BACKENDS))
    p.add_argument("--scenarios", type=lambda s: s.split(","), default=list(SCENARIOS))
    p.add_argument("--runs", type=int, default=None, help="timed ORT runs per latency (default 7, smoke 3)")
    p.add_argument("--threads", type=int, default=2, help="framework threads in each worker")
    p.add_argument("--out", type=Path, help="results folder")
    p.add_argument("--no-overhead", action="store_true", help="skip the unicompress-vs-direct-call timing")
    p.add_argument("--overhead-repeats", type=int, default=None,
                   help="repeats of one-shot timings (default 5, smoke 3)")
    p.add_argument("--native-repeats", type=int, default=None,
                   help="repeats of the by-hand pruning comparison (default 15, smoke 3; 0.2-3 s each)")
    p.add_argument("--native-only", action="store_true",
                   help="run only the comparisons with each framework's pruning call made by hand (merged into --out)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per worker")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of an earlier results.json in --out for what this run does not measure")
    p.add_argument("--keep-onnx", action="store_true",
                   help="keep each run's before/after ONNX files in runs/<backend>-<scenario>/ (for --remeasure)")
    p.add_argument("--remeasure", action="store_true",
                   help="measure nothing new: re-time the kept ONNX files of the rows in --out/results.json "
                        "(before and after in turn) and rewrite the results")
    p.add_argument("--collect", action="store_true",
                   help="run nothing: rebuild the rows of --backends/--scenarios from runs/*/example.json "
                        "(after an interrupted run) and merge them into --out")
    p.add_argument("--in-process", action="store_true",
                   help="run every scenario in this process (for tests: no isolation, shared peak memory)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--scenario", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.runs = args.runs or (3 if args.smoke else 7)
    args.overhead_repeats = args.overhead_repeats or (3 if args.smoke else 5)
    args.native_repeats = args.native_repeats or (3 if args.smoke else 15)
    if args.native_only:
        args.scenarios, args.merge, args.no_overhead = [], True, False
    if args.worker:
        args.out = Path(args.out)
        return _worker_main(args)
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    out = args.out = Path(args.out or (DEFAULT_OUT / "smoke" if args.smoke else DEFAULT_OUT)).resolve()
    if args.remeasure:
        doc = remeasure_latency(json.loads((out / "results.json").read_text()), out / "runs", args.runs,
                                args.threads)
        written = write_results(doc, out)
        print(markdown(doc))
        print("written: " + ", ".join(str(v) for v in written.values()))
        return 0
    doc = collect_rows(args) if args.collect else run_all(args)
    if args.merge or args.collect:
        doc = merge_previous(doc, out / "results.json")
    written = write_results(doc, out)
    print(markdown(doc))
    print("written: " + ", ".join(str(v) for v in written.values()))
    return 0 if all(r["status"] in ("ok", "unsupported") for r in doc["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
