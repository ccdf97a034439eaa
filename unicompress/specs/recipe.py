"""Recipe: a named chain of stages, a backend, where the model and data come from, what to export."""
from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from .base import SPEC_VERSION, SpecModel
from .distillation import DistillationSpec
from .finetune import FineTuneSpec
from .lowrank import LowRankSpec
from .pruning import PruningSpec
from .quantization import QuantizationSpec
from .structure import StructureDeclaration
from .training import MAX_SEED

#: characters a recipe's name must not hold: it names files inside export.directory (path separators, NUL and
#: other control characters would put them elsewhere or break them)
_NAME_FORBIDDEN = frozenset("/\\") | frozenset(map(chr, range(32))) | {chr(127)}
#: bytes of a name in UTF-8: file names are at most 255 bytes, and exports add a suffix (".tensorflow")
MAX_NAME_BYTES = 200

Stage = Annotated[Union[PruningSpec, QuantizationSpec, DistillationSpec, LowRankSpec, FineTuneSpec],
                  Field(discriminator="technique")]
#: the spec classes a stage may be, keyed by their `technique`
STAGE_TYPES = {cls.model_fields["technique"].default: cls
               for cls in (PruningSpec, QuantizationSpec, DistillationSpec, LowRankSpec, FineTuneSpec)}


class ExportFormat(str, Enum):
    onnx = "onnx"
    native = "native"  # the framework's own format (torch state/ExportedProgram, SavedModel/TFLite, Paddle inference)


class ModelSource(SpecModel):
    """Where the model comes from when a recipe runs from the CLI.

    `zoo` names a model every backend can build (e.g. ``minilm-l6``); `factory` is a
    ``"module:function"`` the CLI imports and calls with `kwargs` and ``backend=<name>``.
    """

    zoo: Optional[str] = None
    factory: Optional[str] = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    weights: Optional[str] = Field(None, min_length=1, description="safetensors file to load after building; "
                                   "`{backend}` in the path is replaced by the backend's name (a checkpoint per "
                                   "framework)")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("weights")
    @classmethod
    def _weights_path(cls, weights: Optional[str]) -> Optional[str]:
        if weights is not None and "\x00" in weights:
            raise ValueError("a path cannot hold a NUL character")
        return weights

    @model_validator(mode="after")
    def _one(self) -> "ModelSource":
        if (self.zoo is None) == (self.factory is None):
            raise ValueError("give exactly one of zoo or factory")
        if self.weights is not None:
            leftover = self.weights.replace("{backend}", "")
            if "{" in leftover or "}" in leftover:
                raise ValueError(f"weights {self.weights!r}: the only placeholder allowed is {{backend}}")
        return self

    def weights_for(self, backend: str) -> Optional[str]:
        """The weights path for one backend (``{backend}`` filled in). Example: ``weights_for("paddle")``."""
        return self.weights.replace("{backend}", backend) if self.weights is not None else None


class DataSource(SpecModel):
    """Where train, calibration and evaluation data come from (framework-neutral numpy batches)."""

    dataset: Optional[str] = None
    factory: Optional[str] = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one(self) -> "DataSource":
        if (self.dataset is None) == (self.factory is None):
            raise ValueError("give exactly one of dataset or factory")
        return self


class ExportSpec(SpecModel):
    """What to write at the end; every file is written atomically."""

    formats: list[ExportFormat] = Field(default_factory=lambda: [ExportFormat.onnx])
    directory: str = Field("unicompress-out", min_length=1, description="where the files go; each is named "
                           "after the recipe's name, which cannot leave this directory")
    opset: int = Field(17, ge=13, le=21)

    @field_validator("directory")
    @classmethod
    def _path(cls, directory: str) -> str:
        if "\x00" in directory:
            raise ValueError("a path cannot hold a NUL character")
        return directory


class Recipe(SpecModel):
    """An ordered chain of compression stages run by one backend.

    Example (YAML)::

        name: minilm-int8
        backend: torch          # or tensorflow, paddle, auto
        model: {zoo: minilm-l6, kwargs: {num_labels: 5}}
        data: {dataset: bbc-news}
        stages:
          - technique: quantization
            mode: static
    """

    version: Literal["1"] = SPEC_VERSION
    name: str = Field("recipe", min_length=1, max_length=200)
    description: str = ""
    backend: str = Field("auto", min_length=1, description="'auto' picks the backend from the model's type")
    model: Optional[ModelSource] = None
    data: Optional[DataSource] = None
    stages: list[Stage] = Field(..., min_length=1)
    export: Optional[ExportSpec] = None
    structure: Optional[StructureDeclaration] = Field(
        None, description="where the model's attention heads and FFN pairs are, when discovery cannot know it")
    evaluate: bool = True
    seed: int = Field(0, ge=0, le=MAX_SEED, description="below 2**32: every framework's and numpy's seeding takes it")

    @field_validator("name")
    @classmethod
    def _name_is_a_file_name(cls, name: str) -> str:
        """The name becomes ``<export.directory>/<name>.onnx`` (and ``.<backend>``): one plain file name."""
        bad = sorted({c for c in name if c in _NAME_FORBIDDEN})
        if bad:
            raise ValueError(f"holds {', '.join(map(repr, bad))}: the name names files inside export.directory, so "
                             "it cannot hold path separators or control characters")
        if set(name) <= {"."}:
            raise ValueError("is not a file name (only dots: it would name a directory)")
        size = len(name.encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:
            raise ValueError(f"is {size} bytes in UTF-8; at most {MAX_NAME_BYTES} (it becomes a file name)")
        return name

    @model_validator(mode="after")
    def _order(self) -> "Recipe":
        quant_seen = None
        for i, stage in enumerate(self.stages):
            if quant_seen is not None and stage.technique != "quantization":
                raise ValueError(f"stage {i} ({stage.technique}) comes after quantization (stage {quant_seen}); "
                                 "quantize last, e.g. distill -> prune -> quantize")
            if stage.technique == "quantization":
                if quant_seen is not None:
                    raise ValueError(f"stages {quant_seen} and {i} both quantize; use overrides for mixed precision")
                quant_seen = i
        return self
