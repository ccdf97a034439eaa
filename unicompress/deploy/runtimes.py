"""The registry of inference runtimes a model file can be deployed to (ONNX Runtime, OpenVINO, adapters' own).

A `Runtime` is pure data: its name, the module that loads files for it, the framework modules that module
imports, the pip requirements that install them and the file kinds (suffixes) it reads. Nothing is imported
until `load` is called, so listing or checking runtimes never imports a framework.

An adapter contributes a runtime for its native export by registering one (or through the entry-point
group ``unicompress.runtimes``, whose value is a `Runtime` object)::

    register_runtime(Runtime("tflite", "unicompress_tensorflow.tflite_runtime", imports=("tensorflow",),
                             requires=("tensorflow-cpu==2.21.0",), reads=(".tflite",)))

The loading module must define ``load(path, threads, **options) -> Loaded`` and ``version() -> str``.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Sequence, Union

import numpy as np

from ..errors import MissingFrameworkError, UnicompressError

ENTRY_POINT_GROUP = "unicompress.runtimes"


class RuntimeNotFoundError(UnicompressError, LookupError):
    """No runtime of that name is registered."""


class MissingRuntimeError(MissingFrameworkError):
    """A runtime's package is not installed; the message carries the pip command."""

    def __init__(self, runtime: str, requirements: Sequence[str], cause: Optional[BaseException] = None):
        super().__init__(runtime, requirements, cause)
        detail = f" ({cause})" if cause else ""
        self.msg = (f"runtime {runtime!r} needs packages that are not installed{detail}. Install them with:\n"
                    f"    {pip_command(requirements)}")  # ImportError's str() is its msg
        self.args = (self.msg,)


def pip_command(requirements: Sequence[str]) -> str:
    """``pip install ...`` with version specifiers quoted for the shell."""
    return "pip install " + " ".join(f'"{r}"' if any(c in r for c in "<>=!") else r for r in requirements)


@dataclass(frozen=True)
class InputSpec:
    """One graph input, described the way ONNX Runtime does (so `synthetic_inputs`/`feeds_for` apply)."""

    name: str
    shape: tuple
    type: str  # e.g. "tensor(int64)"


class Loaded(Protocol):
    """A model file loaded by a runtime, ready to run."""

    runtime: str
    detail: str  # e.g. "CPU, 2 threads, inference precision bf16"

    def get_inputs(self) -> Sequence[InputSpec]: ...

    def output_names(self) -> list[str]: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Runtime:
    """A registry entry: how to load files of the kinds in `reads` with `module`'s ``load``."""

    name: str
    module: str
    imports: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    reads: tuple[str, ...] = (".onnx",)
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    #: runtimes are imported in ascending order before any file loads (Paddle before TensorFlow: the other
    #: order crashes the process)
    import_order: int = 0

    def available(self) -> bool:
        """Whether every framework module it imports is installed (found, not imported)."""
        return all(_installed(m) for m in self.imports)

    def install_hint(self) -> str:
        """The pip command that installs what it needs."""
        return pip_command(self.requires)

    def require(self) -> None:
        """Fail with the pip command unless `available()`."""
        missing = [m for m in self.imports if not _installed(m)]
        if missing:
            raise MissingRuntimeError(self.name, self.requires, ModuleNotFoundError(f"No module named {missing[0]!r}"))

    def reads_file(self, path: Union[str, Path]) -> bool:
        """Whether this runtime loads files of that kind (by suffix)."""
        return Path(path).suffix.lower() in self.reads

    def _impl(self) -> Any:
        self.require()
        try:
            return importlib.import_module(self.module)
        except ImportError as exc:  # its module imported something absent after all
            raise MissingRuntimeError(self.name, self.requires, exc) from exc

    def prepare(self) -> None:
        """Import the runtime's module now (see `import_order`)."""
        self._impl()

    def version(self) -> str:
        """The installed version of the runtime's package."""
        return str(self._impl().version())

    def load(self, path: Union[str, Path], threads: int = 2) -> Loaded:
        """Load `path` with `threads` intra-op threads; the entry's `options` go to the module's ``load``."""
        return self._impl().load(Path(path), threads, **dict(self.options))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


_lock = threading.Lock()
_registered: dict[str, Runtime] = {}

BUILTIN = (
    Runtime("onnxruntime", "unicompress.deploy.ort", imports=("onnxruntime",), requires=("onnxruntime>=1.17",),
            description="ONNX Runtime, CPU execution provider"),
    Runtime("openvino", "unicompress.deploy.openvino_rt", imports=("openvino",), requires=("openvino==2026.4.1",),
            reads=(".onnx", ".xml"), description="OpenVINO on the CPU at the precision it picks for this CPU "
                                                 "(bf16 where the CPU has it)"),
    Runtime("openvino-f32", "unicompress.deploy.openvino_rt", imports=("openvino",),
            requires=("openvino==2026.4.1",), reads=(".onnx", ".xml"),
            description="OpenVINO on the CPU, float ops kept in f32", options={"precision": "f32"}),
    # the TensorFlow adapter's native export; its module lives in the adapter (it imports TensorFlow)
    Runtime("tflite", "unicompress_tensorflow.tflite_runtime", imports=("tensorflow", "unicompress_tensorflow"),
            requires=("unicompress-tensorflow",), reads=(".tflite",),
            description="TensorFlow Lite interpreter (the TensorFlow backend's native export)"),
    Runtime("paddle-inference", "unicompress_paddle.inference_runtime", imports=("paddle", "unicompress_paddle"),
            requires=("unicompress-paddle",), reads=(".json", ".pdmodel"),
            description="Paddle Inference CPU predictor (the Paddle backend's native export: model.json + "
                        "model.pdiparams)", import_order=-1),
)
for _rt in BUILTIN:
    _registered[_rt.name] = _rt


def register_runtime(runtime: Runtime, *, replace: bool = False) -> None:
    """Add a runtime to this process's registry (an adapter's native runtime, a test double of a missing one)."""
    with _lock:
        if runtime.name in _registered and not replace:
            raise ValueError(f"runtime {runtime.name!r} is already registered; pass replace=True to override it")
        _registered[runtime.name] = runtime


def unregister_runtime(name: str) -> None:
    """Forget a runtime registered in this process (built-ins come back only by registering them again)."""
    with _lock:
        _registered.pop(name, None)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def known_runtimes() -> list[str]:
    """Names of every registered runtime and every one installed packages declare, without importing any."""
    return sorted(set(_registered) | set(_entry_points()))


def get_runtime(name: str) -> Runtime:
    """The registry entry of that name, or an error listing the known ones.

    Example: ``get_runtime("openvino").available()``.
    """
    with _lock:
        if name in _registered:
            return _registered[name]
    ep = _entry_points().get(name)
    if ep is not None:
        runtime = ep.load()
        if not isinstance(runtime, Runtime):
            raise RuntimeNotFoundError(f"entry point {name!r} of group {ENTRY_POINT_GROUP} is not a Runtime")
        return runtime
    known = known_runtimes()
    hint = difflib.get_close_matches(name, known, n=1)
    raise RuntimeNotFoundError(f"no runtime named {name!r}; known: {', '.join(known)}"
                               + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def resolve_runtimes(names: Union[str, Sequence[str]], check_installed: bool = True) -> list[Runtime]:
    """Registry entries for comma-separated or listed names, every name checked before any work.

    Unknown names fail listing the known ones; with `check_installed`, a missing package fails with its
    pip command. Example: ``resolve_runtimes("onnxruntime,openvino")``.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise RuntimeNotFoundError(f"no runtime given; known: {', '.join(known_runtimes())}")
    runtimes, unknown = [], []
    for name in dict.fromkeys(names):  # every name first: one error names all the unknown ones
        try:
            runtimes.append(get_runtime(name))
        except RuntimeNotFoundError:
            unknown.append(name)
    if unknown:
        hints = [h for n in unknown for h in difflib.get_close_matches(n, known_runtimes(), n=1)]
        raise RuntimeNotFoundError(f"no runtime named {', '.join(map(repr, unknown))}; known: "
                                   f"{', '.join(known_runtimes())}"
                                   + (f" (did you mean {', '.join(map(repr, hints))}?)" if hints else ""))
    if check_installed:
        for rt in runtimes:
            rt.require()
    return runtimes
