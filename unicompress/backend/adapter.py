"""The Adapter protocol: the narrow questions a backend answers so the core can do the rest.

An adapter translates neutral specs into native toolkit calls. Its class (the entry point)
must import without its framework so that `unicompress backends` can list it anywhere;
the framework is imported on first use through `require()`, which names the pip command.
"""
from __future__ import annotations

import abc
import copy as _copy
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import numpy as np

from ..errors import ImportOrderError, MissingFrameworkError, Problem
from ..specs import TrainingSpec
from .capabilities import Capabilities
from .plan import StagePlan
from .types import Inputs, LayerInfo, LayerStats, QuantizedTensor, TaskData, TransformerStructure


@dataclass
class StageContext:
    """What a stage may need besides its spec: the teacher, a progress hook, and a place to log.

    `history` maps a series name (e.g. ``"loss"``, ``"sparsity"``) to (step, value) points;
    the report plots them and the conformance suite checks them (e.g. a polynomial schedule).
    """

    teacher: Any = None
    progress: Optional[Callable[[str, int], Any]] = None  # (description, total) -> tqdm-like bar
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    stage_index: int = 0
    plan: Optional[StagePlan] = None  # what the core decided this stage touches (filled by `Adapter.apply`)

    def log(self, series: str, step: int, value: float) -> None:
        """Record one point of a series."""
        self.history.setdefault(series, []).append((int(step), float(value)))

    def bar(self, description: str, total: int):
        """A progress bar (no-op object when none was configured)."""
        if self.progress is None:
            return _NullBar()
        return self.progress(description, total)


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *a, **k) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class Adapter(abc.ABC):
    """Base class of every backend. Subclasses set `name`, `requirements`, `framework_modules`."""

    #: the backend name used in recipes (``backend: torch``)
    name: ClassVar[str] = ""
    #: pip requirement strings that install the framework and toolkit
    requirements: ClassVar[tuple[str, ...]] = ()
    #: top-level modules whose objects this backend owns (used by is_model without importing)
    framework_modules: ClassVar[tuple[str, ...]] = ()
    #: layer kinds (`LayerInfo.kind`) whose weights this backend prunes and quantizes; a selected layer of
    #: another kind is refused before work (or skipped and reported, with `selector.allow_partial`)
    weight_kinds: ClassVar[frozenset[str]] = frozenset({"linear", "packed_qkv"})
    #: the names `build_model` builds (``unicompress.zoo``); the conformance suite runs a case only on a backend
    #: that builds its model ("user-encoder": the backend's own user architecture)
    zoo_models: ClassVar[tuple[str, ...]] = ("tiny-bert", "tiny-vit", "minilm-l6")
    #: the adapter's own import package (``unicompress_torch``): `module()` imports its submodules on first use
    package: ClassVar[str] = ""
    #: framework modules `module()` imports first, in this order, failing with the pip command when one is missing
    import_first: ClassVar[tuple[str, ...]] = ()
    #: import-order constraints as data: (module already loaded, module not yet loaded) pairs under which loading
    #: this framework would crash the process (TensorFlow before Paddle segfaults); `module()` raises
    #: ImportOrderError naming them instead
    import_conflicts: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: spec type -> (submodule of `package`, function(model, spec, data, ctx)): the default `handlers()`
    handler_table: ClassVar[Mapping[type, tuple[str, str]]] = {}
    #: the narrow questions answered by one function of the package, as data: method name (``layers``,
    #: ``weights``, ``run``, ...) -> (submodule of `package`, function); the default method calls
    #: ``function(model, *args)`` imported through `module()`. A backend overrides a method only where the answer
    #: needs more than one call (TensorFlow's TFLite and Keras 3 models). Every method of `REQUIRED_ANSWERS` must
    #: be answered here or overridden: checked when the subclass is defined.
    answers: ClassVar[Mapping[str, tuple[str, str]]] = {}
    #: what every backend must answer (the rest have defaults: no structure, no quantized weights, ...)
    REQUIRED_ANSWERS: ClassVar[tuple[str, ...]] = ("layers", "weights", "set_weights", "run", "describe",
                                                   "export_onnx")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls.capabilities, "__isabstractmethod__", False) or not cls.name:
            return  # an abstract intermediate class: its concrete subclasses are checked
        missing = [m for m in cls.REQUIRED_ANSWERS
                   if m not in cls.answers and getattr(cls, m) is getattr(Adapter, m)]
        if missing:
            raise TypeError(f"backend {cls.name!r} ({cls.__qualname__}) answers neither by a method nor in "
                            f"`answers`: {', '.join(missing)}")

    def _answer(self, question: str, model: Any, *args: Any) -> Any:
        """Call the function `answers` names for `question` (NotImplementedError naming it when there is none)."""
        if question not in self.answers:
            raise NotImplementedError(f"the {self.name} backend does not answer {question}()")
        module, function = self.answers[question]
        return getattr(self.module(module), function)(model, *args)

    # ---- pure data: works without the framework -------------------------------------------
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """The table of spec values this backend honours (and whether natively or emulated)."""

    def weight_kinds_for(self, spec: Any) -> frozenset[str]:
        """The layer kinds this backend changes for this spec (default: `weight_kinds` for every technique).

        Override where a toolkit can prune a kind it cannot quantize (torch's packed `in_proj`): the planner
        then refuses a selection of that kind before work, or lists it as left alone with `allow_partial`.
        """
        return self.weight_kinds

    def refusals(self, spec: Any) -> list[Problem]:
        """Combinations of supported values this backend cannot do together (pure data, no framework).

        The capability table judges each field value on its own; this hook names the pairs it
        cannot express (e.g. a calibration method only in static mode). Checked with the table,
        before the model is touched. Paths are relative to the spec, e.g. ``"calibration.method"``.
        """
        return []

    def is_model(self, obj: Any) -> bool:
        """True when `obj` is a model of this framework. Never raises, never imports a framework."""
        try:
            mods = {c.__module__.split(".")[0] for c in type(obj).__mro__}
            return bool(mods & set(self.framework_modules))
        except Exception:
            return False

    def require(self, *modules: str) -> list[Any]:
        """Import the framework modules this adapter needs, or fail with the pip command."""
        out = []
        for mod in modules:
            try:
                out.append(importlib.import_module(mod))
            except ImportError as exc:
                raise MissingFrameworkError(self.name, self.requirements, exc) from exc
        return out

    def module(self, name: str) -> Any:
        """Import ``<package>.<name>`` (a module that imports the framework): import-order constraints first,
        then `import_first` (with the pip command if missing), then `on_framework_loaded` once per process."""
        for loaded, pending in self.import_conflicts:
            if loaded in sys.modules and pending not in sys.modules:
                raise ImportOrderError(f"{loaded} was imported before {pending} in this process; loading {pending} "
                                       "now would crash the whole process. Fix: import "
                                       f"{pending} before {loaded} (e.g. put `import {pending}` first in your "
                                       f"script or notebook), or run the {self.name} backend in a separate process.")
        self.require(*self.import_first)
        cls = type(self)
        if not cls.__dict__.get("_framework_loaded", False):
            self.on_framework_loaded()
            cls._framework_loaded = True
        return importlib.import_module(f"{self.package}.{name}")

    def on_framework_loaded(self) -> None:
        """Run once per process before the first framework module loads (TensorFlow: a multi-worker strategy
        must exist before the first op). Default: nothing."""

    # ---- model plumbing ---------------------------------------------------------------------
    def copy(self, model: Any) -> Any:
        """A deep copy the stages can change freely (the user's model is never touched); default `copy.deepcopy`."""
        if "copy" in self.answers:
            return self._answer("copy", model)
        return _copy.deepcopy(model)

    def layers(self, model: Any) -> list[LayerInfo]:
        """Every compressible layer with its role; names are stable and dotted.

        Roles must be those of ``unicompress.structure.assign_roles(raw_layers, self.structure(model))``:
        the structure decides, names are the fallback.
        """
        return self._answer("layers", model)

    def structure(self, model: Any) -> Optional[TransformerStructure]:
        """Where attention heads and FFN pairs are (from layer types and the model's config), or None for a
        model that is no Transformer."""
        return self._answer("structure", model) if "structure" in self.answers else None

    def weights(self, model: Any, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        """Float weights of the named layers (all from `layers`) in the neutral [out, in] layout."""
        return self._answer("weights", model, names)

    def set_weights(self, model: Any, weights: dict[str, np.ndarray]) -> None:
        """Write float weights (neutral layout) into the model's layers of those names."""
        self._answer("set_weights", model, weights)

    def neutral_weights(self, model: Any) -> dict[str, np.ndarray]:
        """Every float weight of a zoo-architecture model (`build_model`) under the zoo's neutral names and
        layouts (``unicompress.zoo.bert`` / ``zoo.vit``): the inverse of ``build_model(..., weights=)``."""
        if "neutral_weights" not in self.answers:
            raise NotImplementedError(f"{self.name} cannot read a model's weights in the neutral layout yet")
        return self._answer("neutral_weights", model)

    def quantized_weights(self, model: Any) -> dict[str, QuantizedTensor]:
        """The integer weights and their parameters of every quantized layer."""
        return self._answer("quantized_weights", model) if "quantized_weights" in self.answers else {}

    def run(self, model: Any, inputs: Inputs) -> np.ndarray:
        """Run the model in inference mode: numpy in, numpy out (the first output, e.g. logits)."""
        return self._answer("run", model, inputs)

    def describe(self, model: Any) -> list[LayerStats]:
        """Per-layer shape, parameters, non-zeros and bits."""
        return self._answer("describe", model)

    # ---- compression --------------------------------------------------------------------------
    def handlers(self) -> dict[type, Callable[..., Any]]:
        """Map spec type -> handler(model, spec, data, ctx) -> compressed model (default: `handler_table`,
        each function imported through `module()` on its first call)."""
        return {spec_type: _LazyHandler(self, mod, fn) for spec_type, (mod, fn) in self.handler_table.items()}

    def apply(self, model: Any, spec: Any, data: Optional[TaskData] = None,
              ctx: Optional[StageContext] = None) -> Any:
        """Apply one spec with the native toolkit; returns the (possibly new) model object.

        The core has already checked the capabilities and copied the model. `ctx.plan` holds what the
        stage touches; when the caller gave none (a direct call), the core's planner makes it here, so
        every call path executes one plan.
        """
        handler = self.handlers().get(type(spec))
        if handler is None:
            raise TypeError(f"{self.name} has no handler for {type(spec).__name__}")
        ctx = ctx or StageContext()
        if ctx.plan is None:
            from ..planner import plan_stage  # local: the planner imports this module's types
            ctx.plan = plan_stage(self, model, spec, ctx.stage_index)
        return handler(model, spec, data, ctx)

    def evaluate(self, model: Any, batches) -> dict[str, float]:
        """Accuracy over (inputs, labels) batches, computed on `run` outputs."""
        correct = total = 0
        for x, y in batches:
            pred = np.asarray(self.run(model, x)).argmax(-1)
            correct += int((pred == np.asarray(y)).sum())
            total += int(np.asarray(y).shape[0])
        return {"accuracy": correct / total if total else float("nan")}

    # ---- export --------------------------------------------------------------------------------
    def export_onnx(self, model: Any, path: Path, example: Inputs, opset: int = 17) -> Path:
        """Write the model as ONNX at `path` (quantized models as QDQ or integer ops)."""
        return self._answer("export_onnx", model, Path(path), example, opset)

    def export_native(self, model: Any, directory: Path) -> Path:
        """Write the framework's own deployable format under `directory`; returns what was written."""
        if "export_native" not in self.answers:
            raise NotImplementedError(f"{self.name} has no native export yet")
        return self._answer("export_native", model, Path(directory))

    # ---- models from the zoo -------------------------------------------------------------------
    def build_model(self, zoo: str, *, seed: int = 0, num_labels: Optional[int] = None,
                    weights: Optional[Mapping[str, np.ndarray]] = None, **options: Any) -> Any:
        """Build a named model of the zoo (e.g. ``minilm-l6``, `zoo_models`) in this framework: random weights
        from `seed`, a head of `num_labels` classes, or the neutral `weights` (``unicompress.zoo`` names);
        `options` are backend-specific."""
        if "build_model" not in self.answers:
            raise NotImplementedError(f"{self.name} cannot build zoo model {zoo!r}")
        return getattr(self.module(self.answers["build_model"][0]), self.answers["build_model"][1])(
            zoo, seed=seed, num_labels=num_labels, weights=weights, **options)


class _LazyHandler:
    """A handler that imports its adapter module only when called (so `handlers()` needs no framework)."""

    def __init__(self, adapter: Adapter, module: str, function: str):
        self.adapter, self.module, self.function = adapter, module, function
        self.__name__ = f"{module}.{function}"

    def __call__(self, model: Any, spec: Any, data: Optional[TaskData], ctx: StageContext) -> Any:
        return getattr(self.adapter.module(self.module), self.function)(model, spec, data, ctx)

    def __repr__(self) -> str:
        return f"<handler {self.adapter.package}.{self.__name__}>"


def framework_imported(module: str) -> bool:
    """Whether a framework's top-level module is already loaded in this process."""
    return module in sys.modules
