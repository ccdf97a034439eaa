"""The exceptions unicompress raises: each names what is wrong and how to fix it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


class UnicompressError(Exception):
    """Base class of every error unicompress raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where (dotted field path), what was given, what is allowed."""

    path: str
    value: object
    allowed: str

    def __str__(self) -> str:
        shown = repr(self.value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return f"{self.path or '<root>'}: got {shown}; {self.allowed}"


class SpecValidationError(UnicompressError, ValueError):
    """A spec or recipe is invalid. `problems` holds one entry per problem found."""

    def __init__(self, problems: Sequence[Problem], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{len(self.problems)} problem(s){where}:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class CapabilityError(UnicompressError):
    """The chosen backend cannot honour a spec. Raised before the model is touched."""

    def __init__(self, backend: str, problems: Sequence[Problem], supported: str):
        self.backend = backend
        self.problems = list(problems)
        self.supported = supported
        lines = [f"backend {backend!r} cannot honour this spec:"]
        lines += [f"  - {p}" for p in self.problems]
        lines += [f"what {backend!r} supports:", supported]
        super().__init__("\n".join(lines))


class BackendNotFoundError(UnicompressError, LookupError):
    """No backend of that name is registered or installed."""


class MissingFrameworkError(UnicompressError, ImportError):
    """A backend's framework is not installed; the message carries the pip command."""

    def __init__(self, backend: str, requirements: Sequence[str], cause: BaseException | None = None):
        self.backend = backend
        self.requirements = list(requirements)
        cmd = "pip install " + " ".join(f'"{r}"' if any(c in r for c in "<>=!") else r for r in requirements)
        detail = f" ({cause})" if cause else ""
        super().__init__(f"backend {backend!r} needs packages that are not installed{detail}. Install them with:\n    {cmd}")


class ModelNotSupportedError(UnicompressError, TypeError):
    """No installed backend recognises the model object (backend: auto)."""


class StageError(UnicompressError):
    """A compression stage failed; the user's model is unchanged (we worked on a copy)."""

    def __init__(self, stage_index: int, technique: str, cause: BaseException):
        self.stage_index = stage_index
        self.technique = technique
        self.__cause__ = cause
        super().__init__(f"stage {stage_index} ({technique}) failed: {type(cause).__name__}: {cause}. "
                         "The input model was not modified.")


class ImportOrderError(UnicompressError, RuntimeError):
    """Frameworks were imported in an order that would crash the process (e.g. TensorFlow before Paddle)."""


class MissingDataError(UnicompressError, ValueError):
    """A stage needs data (calibration or training batches) that was not given. Raised before any work."""


class LayerSelectionError(UnicompressError, ValueError):
    """A spec's selector matches no layer of the model. Raised before the model is touched."""


class StructureError(UnicompressError, ValueError):
    """A spec needs Transformer structure (heads, FFN pairs, blocks) the model does not show, or a declared
    structure does not fit the model. Raised before the model is touched; the message says what was found,
    what is missing and how to declare it."""


class JudgeError(UnicompressError):
    """A stage ran but its result does not meet the spec's post-conditions (the per-run judge).

    `checks` holds every check of that stage with its figure. The input model was not modified."""

    def __init__(self, stage_index: int, technique: str, checks: Sequence[object]):
        self.stage_index = stage_index
        self.technique = technique
        self.checks = list(checks)
        failed = [c for c in self.checks if not getattr(c, "passed", True)]
        lines = [f"stage {stage_index} ({technique}) did not do what its spec says; the input model was not "
                 f"modified. {len(failed)} of {len(self.checks)} check(s) failed:"]
        lines += [f"  - {c}" for c in failed]
        super().__init__("\n".join(lines))
