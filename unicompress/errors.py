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


class InvalidDataError(UnicompressError, ValueError):
    """The data given cannot be used as it is: a batch without rows, NaN/inf inputs, labels that are not class
    indices, inputs and labels of different lengths. Raised before any stage when the first batches show it,
    or by the stream that meets it (never a silent spin or silent truncation)."""


class NonFiniteWeightsError(UnicompressError, ValueError):
    """The model's weights hold NaN or inf values; every stage would compute NaN scales and masks from them.
    Raised before any stage; the message names the layers and how many values."""


class CheckpointError(UnicompressError, ValueError):
    """A weights file (safetensors) cannot be read or does not hold what it claims; the message names the file."""


class FactoryNotAllowedError(UnicompressError, PermissionError):
    """A recipe names a ``factory:`` whose module is not on the allow-list: recipes are data, and their code
    runs only from modules the user allowed (``--allow-factory MODULE`` or UNICOMPRESS_ALLOW_FACTORIES)."""


class ExportError(UnicompressError):
    """Every stage ran, but writing or evaluating the result failed. Nothing is lost: `result` holds the
    compressed model (and the report so far), and `recovery` the folder a copy was saved to (None if that
    failed too). The input model was not modified."""

    def __init__(self, message: str, result: object = None, recovery: object = None):
        self.result = result
        self.recovery = recovery
        super().__init__(message)


class Shown:
    """How an error message shows a value: a short rendering computed once, never the whole value."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Shown) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def shown(value: object, limit: int = 80) -> object:
    """`value` itself when it is a small scalar; otherwise a `Shown` summary safe to put in a Problem.

    Containers show their size (never their content, which may come from a file that is no recipe), long
    strings are cut before they are repr()'d, and integers too long to print show their digit count.
    Example: ``str(Problem("x", shown([1] * 10**6), "too long"))`` is ``x: got a list of 1000000 items; ...``.
    """
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 256 else Shown(f"an integer of about {int(value.bit_length() * 0.30103)} "
                                                             "digits")
    if isinstance(value, str):
        return value if len(value) <= limit else Shown(repr(value[:limit - 3]) + "...")
    if isinstance(value, (bytes, bytearray)):
        return Shown(f"{len(value)} bytes")
    if isinstance(value, dict):
        return Shown(f"a mapping of {len(value)} key(s)")
    if isinstance(value, (list, tuple, set, frozenset)):
        return Shown(f"a list of {len(value)} item(s)")
    return Shown(f"a {type(value).__name__}")


class OutputPathError(UnicompressError, ValueError):
    """An output path cannot be written: a file where a folder belongs (or the reverse), a folder that is
    not writable or on a read-only file system. Raised before any stage, so no work is lost."""
