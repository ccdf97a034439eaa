"""The `unicompress` command: run, validate, schema, backends, inspect.

Every sub-command's --help has examples; errors print one line per problem and exit 2.

Recipes are data: a recipe's ``factory:`` (``module:function``) is imported and called only when its module is
allowed (`allowed_factory_modules`). The command runs in a child process whose stderr is filtered of the
frameworks' import noise (`NOISE`, nothing else), which also catches a native library ending the process with
status 0 before the command finished.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from . import __version__
from .errors import FactoryNotAllowedError, Problem, UnicompressError

#: modules whose factories recipes may call: comma-separated, e.g. ``mypkg.models,mypkg.data``
FACTORY_ENV = "UNICOMPRESS_ALLOW_FACTORIES"
#: entry-point group through which an installed distribution vouches for its factory modules (value: a module)
FACTORY_ENTRY_POINTS = "unicompress.factories"
#: set to 1 to see the frameworks' stderr unfiltered (and run without the child process)
RAW_STDERR_ENV = "UNICOMPRESS_RAW_STDERR"
_CHILD_ENV = "UNICOMPRESS_CLI_CHILD"  # set in the child: run the command here, report completion on this fd

#: stderr lines the frameworks print on import that say nothing about the run (each matched whole):
#: absl/glog INFO lines and absl's pre-init notice (TensorFlow, Paddle), TensorFlow's CPU-feature hint and its
#: failed cuInit on a machine without a GPU, opencv's numpy-ABI line (imported by PaddleSlim, which survives
#: it), torchao's optional CUDA kernels that cannot load on CPU, torch's pytree notice about enums, and the
#: TFLite interpreter's note that it uses XNNPACK.
NOISE = tuple(re.compile(p) for p in (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"I\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w./-]+:\d+\] .*",
    r"E\d{4} \d\d:\d\d:[\d.]+\s+\d+ cuda_\w+\.cc:\d+\] failed call to cuInit.*",
    r"To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.",
    r"RuntimeError: module compiled against ABI version 0x[0-9a-f]+ but this version of numpy is 0x[0-9a-f]+",
    r"Failed to load \S*torchao\S*\.so: .*",
    r"W\d{4} [\d:. ]+\d+ \S*torch/utils/_pytree\.py:\d+\] .* is an Enum subclass and is now natively supported .*",
    r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.",  # every tf.lite.Interpreter (bench --runtime tflite)
))

EPILOG = """examples:
  unicompress validate examples/int8_static.yaml      check a recipe, one line per problem
  unicompress run examples/int8_static.yaml           compress, evaluate, export, print the report
  unicompress run examples/int8_static.yaml --backend tensorflow   same recipe, another framework
  unicompress backends                                installed backends and their capability matrix
  unicompress schema > recipe.schema.json             JSON Schema for editor completion
  unicompress inspect out/model.onnx                  sparsity, bit widths and size per layer
"""


BENCH_EPILOG = """examples:
  unicompress bench fp32.onnx int8.onnx --batch 1 32 --length 128 --threads 2
      ONNX Runtime only: latency and size of each file at each batch, as ratios to the first file
  unicompress bench fp32.onnx int8.onnx --runtime onnxruntime,openvino --batch 32 --runs 15
      every file on every runtime, timed in turn in one run; speed-up against onnxruntime on fp32.onnx,
      output agreement with it, and the fastest pair that keeps agreement >= --tolerance, with the reason
  unicompress bench fp32.onnx int8.onnx --runtime openvino,openvino-f32 --tolerance 0.999 --metric cosine \\
      --json deploy.json --plot deploy.png
      the table and the choice as JSON, speed-up vs agreement as a PNG

  unicompress bench out/model.onnx out/model.tflite --runtime onnxruntime,tflite --vocab 30522
      a TensorFlow backend's native export in the TFLite interpreter next to its ONNX file
      (paddle-inference reads the Paddle backend's native/model.json the same way)

runtimes: onnxruntime (CPU EP), openvino (ONNX or IR .xml; the precision OpenVINO picks for this CPU, bf16
where it has it), openvino-f32 (float ops kept in f32), tflite (.tflite, with unicompress-tensorflow),
paddle-inference (model.json + model.pdiparams, with unicompress-paddle); adapters may register more.
A missing package is named with its pip command (openvino: pip install "openvino==2026.4.1", or the
unicompress[deploy] extra). With tflite and paddle-inference together, Paddle is loaded first (TensorFlow
before Paddle crashes a process).
The first file is the baseline; runs are interleaved so machine load affects all files alike.
Exit status: 0; 1 when some pair could not be loaded or run (its row says why); 2 for a usage error.
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
    run.add_argument("--allow-factory", action="append", default=[], metavar="MODULE",
                     help=f"let the recipe's factory: call functions of MODULE (and its submodules); repeatable. "
                          f"Also: {FACTORY_ENV}=mod1,mod2")

    val = sub.add_parser("validate", help="check recipe files without running anything",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="examples:\n  unicompress validate examples/*.yaml --backend paddle\n"
                                 "  unicompress validate examples/prune_heads_ffn.yaml --backend torch --plan")
    val.add_argument("recipes", nargs="+", help="recipe files")
    val.add_argument("--backend", help="also make every check `run --backend` makes before work: the backend's "
                                       "refusals, factories (allowed, importable; never called), weight files, "
                                       "data, export folder")
    val.add_argument("--plan", action="store_true",
                     help="also build the recipe's model and plan every stage on it (the layers, heads and FFN "
                          "pairs each stage touches, and every refusal `run` would make), without compressing")
    val.add_argument("--allow-factory", action="append", default=[], metavar="MODULE",
                     help="as for run: factories of MODULE may be imported to check them (never called, except "
                          "by --plan, which builds the model)")

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

    bn = sub.add_parser("bench", help="latency and size of model files as ratios to a baseline; with --runtime, "
                                      "on several runtimes, with output agreement and the pick of the fastest",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=BENCH_EPILOG)
    bn.add_argument("baseline", help="the reference .onnx file (FP32)")
    bn.add_argument("candidates", nargs="*", help="compressed model files to compare with it")
    bn.add_argument("--batch", type=int, nargs="+", default=None,
                    help="batch size(s) (default 1 32; with --runtime one size, default 32)")
    bn.add_argument("--length", type=int, default=128, help="sequence length for token inputs")
    bn.add_argument("--threads", type=int, default=2, help="intra-op / inference threads of every runtime")
    bn.add_argument("--runs", type=int, default=None,
                    help="timed runs per file and batch, median reported (default 7; with --runtime 15)")
    bn.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                    help="--json alone: print JSON instead of the table; --json FILE (with --runtime): also "
                         "write the table, agreement and choice as JSON to FILE")
    bn.add_argument("--runtime", metavar="NAMES",
                    help="comma-separated runtimes to run every file on, e.g. onnxruntime,openvino "
                         "(known: see below); ratios against onnxruntime on the baseline")
    bn.add_argument("--tolerance", type=float, default=None,
                    help="agreement a pair must keep to be chosen (default 0.99): argmax agreement for "
                         "classifiers, cosine of the first output otherwise")
    bn.add_argument("--metric", choices=("auto", "argmax", "cosine"), default="auto",
                    help="the agreement the tolerance applies to (auto: argmax when the first output is named "
                         "like logits/scores, else cosine)")
    bn.add_argument("--warmup", type=int, default=2, help="untimed runs per pair before timing (--runtime)")
    bn.add_argument("--vocab", type=int, default=1000,
                    help="synthetic token ids are drawn below this (--runtime; default 1000, valid for BERT "
                         "vocabularies; set a tiny model's vocabulary size)")
    bn.add_argument("--plot", metavar="PNG", help="with --runtime: write speed-up vs agreement to this PNG")
    _search_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `unicompress` command; returns the exit status.

    Run as the command (no `argv`), the work happens in a child process whose stderr is filtered (`NOISE`);
    `main([...])` from Python runs in this process.
    """
    if argv is None and _should_supervise():
        return _supervise()
    _quiet_frameworks()
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, a usage error: the command did finish
        _report_completion(exc.code if isinstance(exc.code, int) else int(exc.code is not None))
        raise
    try:
        status = {"run": _run, "validate": _validate, "schema": _schema, "backends": _backends,
                  "inspect": _inspect, "bench": _bench, "search": _search}[args.command](args)
    except UnicompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        status = 130
    _report_completion(status)
    return status


# ---- framework noise ---------------------------------------------------------------------------------------------
def is_noise(line: str) -> bool:
    """Whether one stderr line is framework import noise (`NOISE`); errors and tracebacks never are."""
    text = line.rstrip("\r\n")
    return any(p.fullmatch(text) for p in NOISE)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not is_noise(record.getMessage())
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is not ours to judge
            return True


def _quiet_frameworks() -> None:
    """In this process: drop the noise torch and torchao log through `logging`, and the setup warnings Paddle and
    PaddleSlim raise on import (ccache, pkg_resources). Real warnings and errors are untouched."""
    if os.environ.get(RAW_STDERR_ENV) == "1":
        return
    for name in ("torchao", "torch.utils._pytree"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r"No ccache found", category=UserWarning)
    warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated as an API", category=UserWarning)


def _should_supervise() -> bool:
    """Only the command itself (the console script, or ``python -m unicompress.cli``) re-runs in a child: a script
    that calls `main()` is never started again."""
    started_as_command = Path(sys.argv[0]).name in ("unicompress", "cli.py") if sys.argv else False
    return (os.name == "posix" and started_as_command and os.environ.get(_CHILD_ENV) is None
            and os.environ.get(RAW_STDERR_ENV) != "1" and bool(getattr(sys, "orig_argv", None)))


def _supervise() -> int:
    """Run this very command line again in a child process, pass its stdout through, filter its stderr line by
    line, and return its status. A child that ends with status 0 without reporting that the command finished
    (a native library called exit(), e.g. LAPACK on an illegal value) is reported as a failure."""
    import select
    import signal
    import subprocess

    done_r, done_w = os.pipe()
    env = dict(os.environ, **{_CHILD_ENV: str(done_w)})
    proc = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], stderr=subprocess.PIPE, env=env,
                            pass_fds=(done_w,))
    os.close(done_w)
    previous = {sig: signal.signal(sig, handler) for sig, handler in
                ((signal.SIGINT, signal.SIG_IGN),  # the terminal sends it to the child too; it cleans up
                 (signal.SIGTERM, lambda *_: proc.terminate()))}
    err, out = proc.stderr.fileno(), sys.stderr.buffer
    pending = b""
    try:
        while True:
            ready, _, _ = select.select([err], [], [], 0.2)
            if not ready:
                if pending:  # a partial line that waits: show it (a prompt, a progress bar)
                    out.write(pending)
                    out.flush()
                    pending = b""
                continue
            chunk = os.read(err, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            kept = [line + b"\n" for line in lines if not is_noise(line.decode("utf-8", "replace"))]
            if b"\r" in pending:  # progress bars redraw with carriage returns: pass them through now
                head, sep, pending = pending.rpartition(b"\r")
                kept.append(head + sep)
            if kept:
                out.write(b"".join(kept))
                out.flush()
        if pending and not is_noise(pending.decode("utf-8", "replace")):
            out.write(pending)
            out.flush()
        status = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    with os.fdopen(done_r, "rb") as fh:
        finished = fh.read().startswith(b"done")
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = str(-status)
        print(f"unicompress: the process was killed by signal {name}; see the lines above", file=sys.stderr)
        return 128 - status
    if status == 0 and not finished:
        print("unicompress: the process ended with status 0 before the command finished (a native library "
              "stopped it; see the lines above). Treat the command as failed.", file=sys.stderr)
        return 3
    return status


def _report_completion(status: int) -> None:
    fd = os.environ.get(_CHILD_ENV)
    if fd is None or not fd.isdigit():
        return
    try:
        os.write(int(fd), b"done %d" % status)
        os.close(int(fd))
    except OSError:
        pass
    os.environ.pop(_CHILD_ENV, None)


# ---- factories: recipes are data -------------------------------------------------------------------------------
def allowed_factory_modules(extra: Sequence[str] = (), adapter: Any = None) -> list[str]:
    """The modules whose functions a recipe's ``factory:`` may name, in this order of sources:

    - ``UNICOMPRESS_ALLOW_FACTORIES`` (comma- or space-separated module names) and ``--allow-factory MODULE``;
    - modules installed distributions vouch for under the entry-point group ``unicompress.factories``;
    - the module that defines the recipe's backend adapter (you chose to run that code already).
    A module allows its submodules too. Example: ``allowed_factory_modules(["mypkg"])``.
    """
    from importlib import metadata

    allowed = [m for m in re.split(r"[,\s]+", os.environ.get(FACTORY_ENV, "")) if m]
    allowed += [m.strip() for m in extra if m.strip()]
    try:
        allowed += [ep.value.split(":")[0].strip() for ep in metadata.entry_points(group=FACTORY_ENTRY_POINTS)]
    except Exception:  # noqa: BLE001 - a broken distribution's metadata must not stop the command
        pass
    if adapter is not None:
        allowed.append(type(adapter).__module__)
    return list(dict.fromkeys(allowed))


def factory_refusal(ref: str, allowed: Sequence[str]) -> Optional[str]:
    """Why `ref` ("module:function") may not be called (None when it may)."""
    module, _, attr = ref.partition(":")
    if attr.startswith("_"):
        return f"{attr!r} is private: a factory is a public function"
    if not any(module == m or module.startswith(m + ".") for m in allowed):
        return (f"module {module!r} is not allowed to run code from a recipe; if you trust it, pass "
                f"--allow-factory {module} or set {FACTORY_ENV}={module}")
    return None


def resolve_factory(ref: str, allowed: Sequence[str]) -> Any:
    """The callable a recipe's factory names, imported only when its module is allowed (never called here)."""
    refusal = factory_refusal(ref, allowed)
    if refusal:
        raise FactoryNotAllowedError(f"factory {ref!r}: {refusal}")
    module, _, attr = ref.partition(":")
    try:
        target = getattr(importlib.import_module(module), attr)
    except AttributeError:
        raise UnicompressError(f"factory {ref!r}: module {module!r} has no {attr!r}") from None
    except Exception as exc:  # noqa: BLE001 - ImportError, or whatever the module raises while it imports
        raise UnicompressError(f"factory {ref!r}: module {module!r} cannot be imported "
                               f"({type(exc).__name__}: {exc})") from None
    if not callable(target):
        raise UnicompressError(f"factory {ref!r} is a {type(target).__name__}, not a function")
    return target


# ---- validate ----------------------------------------------------------------------------------------------------
def _validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.recipes:
        try:
            status = max(status, _validate_one(path, args))
        except UnicompressError as exc:  # one bad file never stops the others
            print(f"error: {path}: {exc}", file=sys.stderr)
            status = 2
        except Exception as exc:  # noqa: BLE001 - a bug shows its type, and the batch goes on
            print(f"error: {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 2
    return status


def _validate_one(path: str, args: argparse.Namespace) -> int:
    from .api import recipe_problems
    from .backend import get_backend
    from .errors import SpecValidationError
    from .recipe_io import load_recipe

    try:
        recipe = load_recipe(Path(path))
    except SpecValidationError as exc:
        print(f"{path}: INVALID\n{exc}")
        return 2
    name = args.backend or recipe.backend
    full = name != "auto" and bool(args.backend or args.plan)  # every check `run` makes before work
    if not full:  # a data file, its columns and tokenizer are checked always: cheap, no framework
        from .data.recipe_data import data_problems

        problems = data_problems(recipe.data, recipe.model)
        if problems:
            print(f"{path}: valid, but its data: section cannot be loaded:\n  " + "\n  ".join(map(str, problems)))
            return 2
    if name != "auto":
        adapter = get_backend(name)
        problems = recipe_problems(adapter, recipe)
        if full:
            problems += run_problems(recipe, name, adapter, allowed_factory_modules(args.allow_factory, adapter))
        if problems:
            print(f"{path}: valid, but backend {name!r} cannot run it:\n  " + "\n  ".join(map(str, problems)))
            return 2
    print(f"{path}: ok ({len(recipe.stages)} stage(s): {' -> '.join(s.technique for s in recipe.stages)})")
    if args.plan:
        return _print_plan(recipe, name, args)
    return 0


def run_problems(recipe: Any, name: str, adapter: Any, allowed: Sequence[str], out: Optional[str] = None
                 ) -> list[Problem]:
    """What `run` would refuse about the recipe's model, data and outputs, found without running anything:
    factories allowed and importable (never called), the zoo model built by the backend, the weights file
    readable, the dataset known, data present for the stages and the ONNX export, export and report folders
    writable. `validate --backend` prints these; `run` raises them."""
    from .api import _data_need, export_problems, output_problems
    from .specs import ExportFormat

    problems: list[Problem] = []
    for field_name, source in (("model", recipe.model), ("data", recipe.data)):
        ref = getattr(source, "factory", None)
        if ref:
            try:
                resolve_factory(ref, allowed)
            except UnicompressError as exc:
                problems.append(Problem(f"{field_name}.factory", ref, str(exc).split(": ", 1)[-1]))
    if recipe.model is not None and recipe.model.zoo and recipe.model.zoo not in adapter.zoo_models:
        problems.append(Problem("model.zoo", recipe.model.zoo, f"backend {name!r} builds: "
                                f"{', '.join(adapter.zoo_models)}"))
    if recipe.model is not None and recipe.model.weights:
        from .zoo.checkpoint import safetensors_header

        try:
            safetensors_header(recipe.model.weights_for(name))
        except UnicompressError as exc:
            problems.append(Problem("model.weights", recipe.model.weights_for(name), str(exc).split(": ", 1)[-1]))
    if recipe.data is not None and recipe.data.dataset:
        from .data import loader_for

        try:
            loader_for(recipe.data.dataset)
        except UnicompressError as exc:
            problems.append(Problem("data.dataset", recipe.data.dataset, str(exc)))
    if recipe.data is not None and recipe.data.path:
        from .data.recipe_data import data_problems

        problems += data_problems(recipe.data, recipe.model)
    if recipe.data is None:
        problems += [Problem(f"stages[{i}]", stage.technique, f"needs {need} data: add a data: section")
                     for i, stage in enumerate(recipe.stages) for need in [_data_need(stage)] if need]
        if recipe.export is not None and ExportFormat.onnx in recipe.export.formats:
            problems.append(Problem("export.formats", "onnx", "the ONNX export needs example inputs: add a data: "
                                    "section"))
    problems += export_problems(recipe, name)
    report_dir = _report_dir(recipe, out)
    if recipe.export is None or Path(report_dir) != Path(recipe.export.directory):
        problems += output_problems(report_dir, [Path(report_dir) / n for n in ("report.md", "report.json")],
                                    field_name="--out" if out else "report folder")
    return problems


def _report_dir(recipe: Any, out: Optional[str]) -> str:
    return out or (recipe.export.directory if recipe.export else "unicompress-out")


def _print_plan(recipe: Any, name: str, args: argparse.Namespace) -> int:
    """Build the recipe's model and print what each stage would touch (the planner `run` uses)."""
    from .api import check_plan
    from .backend import get_backend
    from .planner import resolve_structure

    if name == "auto" or recipe.model is None:
        print("  plan: needs --backend (or backend: in the recipe) and a model: section")
        return 2
    adapter = get_backend(name)
    allowed = allowed_factory_modules(args.allow_factory, adapter)
    data = _load_data(recipe, allowed)
    model = _build_model(recipe, name, adapter, data, allowed)
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

    if args.runtime is not None:
        return _bench_runtimes(args)
    needless = [f for f, v in (("--tolerance", args.tolerance), ("--plot", args.plot)) if v is not None]
    if args.metric != "auto":
        needless.append("--metric")
    if needless or args.json not in (None, "-"):
        raise UnicompressError(f"{', '.join(needless) or '--json FILE'} needs --runtime (e.g. --runtime "
                               "onnxruntime,openvino); without it bench times ONNX Runtime only")
    rows = compare_latency(args.baseline, args.candidates, args.batch or [1, 32], args.length, args.threads,
                           args.runs or 7)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(format_table(("file", "batch", "median ms", "p90 ms", "size MB", "speed-up", "smaller"),
                       [(Path(r["path"]).name, r["batch"], f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}",
                         f"{r['size_mb']:.2f}", f"{r['speedup']:.2f}x", f"{r['size_ratio']:.2f}x") for r in rows]))
    return 0


def _bench_runtimes(args: argparse.Namespace) -> int:
    """`bench --runtime`: every file on every runtime, the table, the choice; exit 1 when a pair failed."""
    from .deploy import compare_runtimes, resolve_runtimes
    from .fileio import atomic_write_text

    runtimes = resolve_runtimes(args.runtime)  # unknown names and missing packages fail before any work
    batches = args.batch or [32]
    if len(batches) != 1:
        raise UnicompressError(f"--runtime compares at one batch size; got --batch {' '.join(map(str, batches))}")
    files = [Path(args.baseline), *map(Path, args.candidates)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UnicompressError(f"no such model file: {', '.join(missing)}")
    if args.json not in (None, "-") and Path(args.json).suffix.lower() in {".onnx", ".xml", ".bin", ".tflite"}:
        raise UnicompressError(f"--json takes the JSON file to write, not a model ({args.json}); put the "
                               "model files before --json")
    tolerance = 0.99 if args.tolerance is None else args.tolerance
    table = compare_runtimes(files, [rt.name for rt in runtimes], batches[0], args.length, args.threads,
                             args.runs or 15, args.warmup, tolerance=tolerance, metric=args.metric, vocab=args.vocab)
    choice = table.choose(tolerance)
    if args.json == "-":
        print(json.dumps(table.to_dict(), indent=2))
    else:
        print(table.to_text())
        print(f"\nchoice: {choice.reason}")
        if args.json is not None:
            print(f"written: {atomic_write_text(Path(args.json), json.dumps(table.to_dict(), indent=2))}")
    if args.plot:
        png = table.plot(args.plot)
        print(f"written: {png}" if png else "no plot: matplotlib is not installed (pip install matplotlib)",
              file=sys.stdout if png else sys.stderr)
    return 1 if any(r.error for r in table.rows) else 0


def _run(args: argparse.Namespace) -> int:
    from .api import compress, recipe_problems
    from .backend import get_backend
    from .errors import BackendNotFoundError, ExportError, SpecValidationError
    from .recipe_io import load_recipe

    recipe = load_recipe(Path(args.recipe))
    name = args.backend or recipe.backend
    if name == "auto":
        raise BackendNotFoundError("a recipe run from the CLI must name its backend (backend: torch) "
                                   "or be given --backend")
    adapter = get_backend(name)
    allowed = allowed_factory_modules(args.allow_factory, adapter)
    problems = recipe_problems(adapter, recipe) + run_problems(recipe, name, adapter, allowed, args.out)
    if problems:  # the same checks as `validate --backend`, before any data is loaded or model built
        if any(p.path.endswith(".factory") for p in problems):
            raise FactoryNotAllowedError("\n".join(["nothing was run:"] + [f"  - {p}" for p in problems]))
        raise SpecValidationError(problems, f"{args.recipe} on backend {name!r} (nothing was run)")
    data = _load_data(recipe, allowed)
    model = _build_model(recipe, name, adapter, data, allowed)
    try:
        result = compress(model, recipe, data, backend=name, progress=not args.no_progress)
    except ExportError as exc:
        if exc.result is not None:  # the compressed model was saved; keep the report beside it too
            _save_report_beside(exc)
        raise
    out = Path(_report_dir(recipe, args.out))
    written = result.report.save(out)
    if args.json:
        print(json.dumps(result.report.to_dict(), indent=2))
    else:
        print(result.report.to_text())
        print("\nwritten: " + ", ".join(str(p) for p in [*result.exports.values(), *written.values()]))
    return 0


def _save_report_beside(exc: Any) -> None:
    if exc.recovery is None:
        return
    try:
        exc.result.report.save(Path(exc.recovery).parent, plot=False)
    except Exception:  # noqa: BLE001 - the model copy matters; the report is a bonus
        pass


def _load_data(recipe: Any, allowed: Sequence[str] = ()) -> Any:
    """The recipe's data: your file (``path:``), a registry dataset or an allowed factory's TaskData (None without
    a data: section)."""
    if recipe.data is None:
        return None
    if recipe.data.path:
        from .data.recipe_data import load_recipe_data

        return load_recipe_data(recipe.data, recipe.model, seed=recipe.seed)
    if recipe.data.dataset:
        from .data import load_dataset

        return load_dataset(recipe.data.dataset, **recipe.data.kwargs)
    return resolve_factory(recipe.data.factory, allowed)(**recipe.data.kwargs)


def _build_model(recipe: Any, name: str, adapter: Any, data: Any, allowed: Sequence[str] = ()) -> Any:
    """The recipe's model on backend `name`: a zoo model (with its checkpoint) or an allowed factory's."""
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
    return resolve_factory(recipe.model.factory, allowed)(backend=name, **kwargs)


def _search_parser(sub: Any) -> None:
    """`unicompress search`: per-layer sensitivity, a search, the best plan within a tolerance as a recipe."""
    se = sub.add_parser("search", help="search a per-layer plan within a metric tolerance; write it as a recipe",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  unicompress search search.yaml --tolerance 0.01 --objective bytes "
                               "--trials 20 --out searchdir\nthe search file is a recipe without stages plus a "
                               "search: section (candidates, tolerance, objective, trials); flags override it")
    se.add_argument("recipe", help="search file (.yaml/.yml/.json)")
    se.add_argument("--backend", help="override the file's backend")
    se.add_argument("--tolerance", type=float, help="largest metric drop allowed on the validation split")
    se.add_argument("--objective", choices=["bytes", "nonzero", "params"])
    se.add_argument("--strategy", choices=["greedy", "optuna"])
    se.add_argument("--trials", type=int, help="combined plans evaluated at most")
    se.add_argument("--time-budget", type=float, metavar="SECONDS", help="start no trial after this long")
    se.add_argument("--out", default="unicompress-search", help="where searched.yaml, pareto.md/png, trials.json "
                                                                 "and sensitivity.* go (default: unicompress-search)")
    se.add_argument("--no-progress", action="store_true", help="hide progress bars")
    se.add_argument("--allow-factory", action="append", default=[], metavar="MODULE", help="as for run")


def _search(args: argparse.Namespace) -> int:
    from .api import recipe_problems
    from .backend import get_backend
    from .errors import BackendNotFoundError, SpecValidationError
    from .recipe_io import validate_data
    from .search import load_search, search
    from .specs.search import SearchSpec

    base, spec = load_search(Path(args.recipe))
    flags = {"tolerance": args.tolerance, "objective": args.objective, "strategy": args.strategy,
             "trials": args.trials, "time_budget_s": args.time_budget}
    spec = validate_data({**spec.model_dump(mode="json"), **{k: v for k, v in flags.items() if v is not None}},
                         SearchSpec, "flags")
    name = args.backend or base.backend
    if name == "auto":
        raise BackendNotFoundError("a search run from the CLI must name its backend (backend: torch) or be given "
                                   "--backend")
    adapter = get_backend(name)
    allowed = allowed_factory_modules(args.allow_factory, adapter)
    # the checks of `run`, on every candidate: what the backend refuses, factories, data, the output folder
    probe = base.model_copy(update={"stages": list(spec.candidates), "export": None})
    problems = recipe_problems(adapter, probe) + run_problems(probe, name, adapter, allowed, args.out)
    if problems:
        if any(p.path.endswith(".factory") for p in problems):
            raise FactoryNotAllowedError("\n".join(["nothing was run:"] + [f"  - {p}" for p in problems]))
        raise SpecValidationError(problems, f"{args.recipe} on backend {name!r} (nothing was run)")
    data = _load_data(base, allowed)
    model = _build_model(base, name, adapter, data, allowed)
    result = search(model, base, spec, data, backend=name, out=args.out, progress=not args.no_progress)
    print((Path(args.out) / "search.md").read_text(encoding="utf-8"))
    print("written: " + ", ".join(str(p) for p in result.files.values()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
