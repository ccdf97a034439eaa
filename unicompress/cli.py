"""The `unicompress` command: run, validate, schema, backends, inspect.

Every sub-command's --help has examples; errors print one line per problem and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from . import __version__
from .errors import UnicompressError

EPILOG = """examples:
  unicompress validate examples/int8_static.yaml      check a recipe, one line per problem
  unicompress run examples/int8_static.yaml           compress, evaluate, export, print the report
  unicompress run examples/int8_static.yaml --backend tensorflow   same recipe, another framework
  unicompress backends                                installed backends and their capability matrix
  unicompress schema > recipe.schema.json             JSON Schema for editor completion
  unicompress inspect out/model.onnx                  sparsity, bit widths and size per layer
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unicompress", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Write Transformer compression once; run it on PyTorch, TensorFlow "
                                            "or PaddlePaddle.", epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"unicompress {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run a recipe: build/load the model, compress, evaluate, export, report",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="example:\n  unicompress run examples/int8_static.yaml --backend torch --out out/")
    run.add_argument("recipe", help="recipe file (.yaml/.yml/.json)")
    run.add_argument("--backend", help="override the recipe's backend (torch, tensorflow, paddle)")
    run.add_argument("--out", help="write the report (md, json, png) here (default: the recipe's export directory)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")

    val = sub.add_parser("validate", help="check recipe files without running anything",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="examples:\n  unicompress validate examples/*.yaml --backend paddle\n"
                                 "  unicompress validate examples/prune_heads_ffn.yaml --backend torch --plan")
    val.add_argument("recipes", nargs="+", help="recipe files")
    val.add_argument("--backend", help="also check that this backend can honour every stage")
    val.add_argument("--plan", action="store_true",
                     help="also build the recipe's model and plan every stage on it (the layers, heads and FFN "
                          "pairs each stage touches, and every refusal `run` would make), without compressing")

    sch = sub.add_parser("schema", help="print the JSON Schema of recipe files")
    sch.add_argument("--output", "-o", help="write to this file instead of stdout")

    bk = sub.add_parser("backends", help="list installed backends and what each supports",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="a value marked * is emulated by unicompress with framework ops")
    bk.add_argument("--json", action="store_true", help="machine-readable output")

    ins = sub.add_parser("inspect", help="per-layer sparsity, bit widths and size of an ONNX file",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="example:\n  unicompress inspect out/minilm-int8.onnx")
    ins.add_argument("model", help="an .onnx file")
    ins.add_argument("--json", action="store_true")

    bn = sub.add_parser("bench", help="ONNX Runtime latency and size of ONNX files, as ratios to a baseline",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  unicompress bench fp32.onnx int8.onnx --batch 1 32 --length 128 --threads 2\n"
                               "the first file is the baseline; runs are interleaved so load affects all alike")
    bn.add_argument("baseline", help="the reference .onnx file")
    bn.add_argument("candidates", nargs="*", help="compressed .onnx files to compare with it")
    bn.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    bn.add_argument("--length", type=int, default=128, help="sequence length for token inputs")
    bn.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    bn.add_argument("--runs", type=int, default=7, help="timed runs per file and batch (median reported)")
    bn.add_argument("--json", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `unicompress` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return {"run": _run, "validate": _validate, "schema": _schema, "backends": _backends,
                "inspect": _inspect, "bench": _bench}[args.command](args)
    except UnicompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130


def _validate(args: argparse.Namespace) -> int:
    from .backend import get_backend
    from .errors import SpecValidationError
    from .recipe_io import load_recipe

    status = 0
    for path in args.recipes:
        try:
            recipe = load_recipe(Path(path))
        except SpecValidationError as exc:
            print(f"{path}: INVALID\n{exc}")
            status = 2
            continue
        name = args.backend or recipe.backend
        if name != "auto":
            caps = get_backend(name).capabilities()
            problems = [f"stages[{i}] {p}" for i, st in enumerate(recipe.stages) for p in caps.problems(st)]
            if problems:
                print(f"{path}: valid, but backend {name!r} cannot run it:\n  " + "\n  ".join(problems))
                status = 2
                continue
        print(f"{path}: ok ({len(recipe.stages)} stage(s): {' -> '.join(s.technique for s in recipe.stages)})")
        if args.plan:
            status = max(status, _print_plan(recipe, name))
    return status


def _print_plan(recipe: Any, name: str) -> int:
    """Build the recipe's model and print what each stage would touch (the planner `run` uses)."""
    from .api import check_plan
    from .backend import get_backend
    from .planner import resolve_structure

    if name == "auto" or recipe.model is None:
        print("  plan: needs --backend (or backend: in the recipe) and a model: section")
        return 2
    adapter = get_backend(name)
    data = _load_data(recipe)
    model = _build_model(recipe, name, adapter, data)
    structure = resolve_structure(adapter, model, recipe.structure)
    print(f"  structure: {structure.summary() if structure else 'no Transformer structure found'}")
    for plan in check_plan(adapter, model, recipe, data, structure):
        parts = [f"{len(plan.selected)} layer(s)"] + ([f"{len(plan.attention)} attention block(s)"] if plan.attention
                                                        else []) + ([f"{len(plan.ffn)} FFN pair(s)"] if plan.ffn else [])
        print(f"  stage {plan.index} {plan.technique}: {', '.join(parts)}"
              + (f"; left alone: {len(plan.skipped)}" if plan.skipped else ""))
        for note in plan.notes:
            print(f"    note: {note}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from .fileio import atomic_write_text
    from .recipe_io import recipe_schema

    text = json.dumps(recipe_schema(), indent=2) + "\n"
    if args.output:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _backends(args: argparse.Namespace) -> int:
    from .backend import available_backends, get_backend
    from .backend.capabilities import Support

    names = available_backends()
    if not names:
        print("no backend installed; install one, e.g.: pip install -e adapters/torch")
        return 1
    loaded = {}
    for name in names:
        try:
            loaded[name] = get_backend(name)
        except UnicompressError as exc:
            loaded[name] = exc
    if args.json:
        print(json.dumps({n: (a.capabilities().to_dict() if not isinstance(a, Exception) else {"error": str(a)})
                          for n, a in loaded.items()}, indent=2))
        return 0
    from .report import format_table

    ok = {n: a for n, a in loaded.items() if not isinstance(a, Exception)}
    rows_by_key: dict[tuple[str, str, str], dict[str, str]] = {}
    for name, adapter in ok.items():
        for technique, path, value, support in adapter.capabilities().rows():
            mark = {Support.native: "yes", Support.emulated: "emulated", Support.unsupported: "-"}[support]
            rows_by_key.setdefault((technique, path, value), {})[name] = mark
    rows = [(t, p, v, *[marks.get(n, "-") for n in ok]) for (t, p, v), marks in sorted(rows_by_key.items())]
    print(f"installed backends: {', '.join(names)}\n")
    print(format_table(("technique", "field", "value", *ok), rows))
    for name, err in loaded.items():
        if isinstance(err, Exception):
            print(f"\n{name}: cannot load: {err}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .onnx.inspect import summarize
    from .report import format_table

    summary = summarize(Path(args.model))
    tensors = [t for t in summary.initializers if len(t.shape) >= 2 and t.size >= 16]
    if args.json:
        print(json.dumps({"file_bytes": summary.file_bytes, "weight_bytes": summary.weight_bytes,
                          "quantized": summary.quantized, "op_counts": summary.op_counts,
                          "tensors": [asdict(t) | {"sparsity": t.sparsity} for t in tensors],
                          "qdq": [asdict(q) for q in summary.qdq],
                          "factorised": [asdict(f) for f in summary.factorised]}, indent=2))
        return 0
    print(format_table(("tensor", "shape", "type", "bits", "sparsity", "KB"),
                       [(t.name, "x".join(map(str, t.shape)), t.dtype, t.bits, f"{t.sparsity:.1%}",
                         f"{t.nbytes / 1024:.1f}") for t in tensors]))
    total = sum(t.size for t in tensors)
    zeros = sum(t.zeros for t in tensors)
    print(f"\n{len(tensors)} weight tensors, {total:,} values, {zeros / max(total, 1):.1%} zeros, "
          f"{summary.weight_bytes / 1e6:.2f} MB of constants, file {(summary.file_bytes or 0) / 1e6:.2f} MB")
    q = [n for n in summary.qdq if n.op == "DequantizeLinear"]
    print(f"quantized: {'yes' if summary.quantized else 'no'} ({len(q)} DequantizeLinear, "
          f"{sum(n.per_channel for n in q)} per-channel); factorised MatMul pairs: {len(summary.factorised)}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import compare_latency
    from .report import format_table

    rows = compare_latency(args.baseline, args.candidates, args.batch, args.length, args.threads, args.runs)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(format_table(("file", "batch", "median ms", "p90 ms", "size MB", "speed-up", "smaller"),
                       [(Path(r["path"]).name, r["batch"], f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}",
                         f"{r['size_mb']:.2f}", f"{r['speedup']:.2f}x", f"{r['size_ratio']:.2f}x") for r in rows]))
    return 0


def _resolve_callable(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _run(args: argparse.Namespace) -> int:
    from .api import compress
    from .backend import get_backend
    from .errors import BackendNotFoundError
    from .recipe_io import load_recipe

    recipe = load_recipe(Path(args.recipe))
    name = args.backend or recipe.backend
    if name == "auto":
        raise BackendNotFoundError("a recipe run from the CLI must name its backend (backend: torch) "
                                   "or be given --backend")
    adapter = get_backend(name)
    data = _load_data(recipe)
    model = _build_model(recipe, name, adapter, data)
    result = compress(model, recipe, data, backend=name, progress=not args.no_progress)
    out = Path(args.out or (recipe.export.directory if recipe.export else "unicompress-out"))
    written = result.report.save(out)
    if args.json:
        print(json.dumps(result.report.to_dict(), indent=2))
    else:
        print(result.report.to_text())
        print("\nwritten: " + ", ".join(str(p) for p in [*result.exports.values(), *written.values()]))
    return 0


def _load_data(recipe: Any) -> Any:
    """The recipe's data: a registry dataset or a factory's TaskData (None without a data: section)."""
    if recipe.data is None:
        return None
    if recipe.data.dataset:
        from .data import load_dataset

        return load_dataset(recipe.data.dataset, **recipe.data.kwargs)
    return _resolve_callable(recipe.data.factory)(**recipe.data.kwargs)


def _build_model(recipe: Any, name: str, adapter: Any, data: Any) -> Any:
    """The recipe's model on backend `name`: a zoo model (with its checkpoint) or a factory's."""
    if recipe.model is None:
        raise UnicompressError("the recipe has no model: section; add e.g. model: {zoo: minilm-l6}")
    kwargs = dict(recipe.model.kwargs)
    if data is not None and data.num_labels and "num_labels" not in kwargs and recipe.model.zoo:
        kwargs["num_labels"] = data.num_labels
    if recipe.model.weights:
        from .zoo.bert import load_safetensors

        kwargs["weights"] = load_safetensors(recipe.model.weights_for(name), prefix_fix=False)
    if recipe.model.zoo:
        return adapter.build_model(recipe.model.zoo, **kwargs)
    return _resolve_callable(recipe.model.factory)(backend=name, **kwargs)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
