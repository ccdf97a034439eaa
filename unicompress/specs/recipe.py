"""Recipe: a named chain of stages, a backend, where the model and data come from, what to export."""
from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

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


#: suffixes of data files: a `dataset:` ending in one is a file given in the wrong field
_DATA_FILE_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".txt", ".arrow")
#: fields of a `data:` section that describe a file (`path:`); dataset:/factory: take their options in kwargs
_PATH_FIELDS = ("format", "text", "label", "task", "split", "split_column", "max_length", "tokenizer", "batch_size",
                "eval_batch_size", "classes", "padding", "drop_duplicates", "vocab_size")


class DataSplit(SpecModel):
    """Fractions of the examples held out per class; train gets the rest (their sum must stay below 1)."""

    test: float = Field(0.0, ge=0.0, lt=1.0, description="fraction for the test split (evaluation)")
    validation: float = Field(0.0, ge=0.0, lt=1.0, description="fraction for the validation split")

    @model_validator(mode="after")
    def _leaves_train(self) -> "DataSplit":
        if self.test + self.validation >= 1.0:
            raise ValueError(f"test + validation = {self.test + self.validation:g} leaves no training examples; "
                             "they must sum to less than 1")
        return self


class DataSource(SpecModel):
    """Where train, calibration and evaluation data come from (framework-neutral numpy batches).

    Exactly one of: `dataset` (a registered name: bbc-news, mnist-5k), `factory` (``module:function``
    returning a TaskData) or `path` (your own file: CSV, TSV, JSON Lines, Parquet, or a saved Hugging Face
    dataset folder), which the other fields describe::

        data: {path: news.csv, text: [title, body], label: category, split: {test: 0.2, validation: 0.1},
               max_length: 128, tokenizer: path/to/model/folder, batch_size: 32}
    """

    dataset: Optional[str] = None
    factory: Optional[str] = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    path: Optional[str] = Field(None, min_length=1, description="your data file or saved dataset folder (relative "
                                "to the working directory)")
    format: Optional[Literal["csv", "tsv", "jsonl", "parquet", "dataset"]] = Field(
        None, description="default: from the file's suffix")
    text: Optional[list[str]] = Field(None, min_length=1, description="text column(s); two or more are encoded "
                                      "as a pair: the first, and the others joined by a space")
    label: Optional[str] = Field(None, min_length=1, description="label column: whole numbers are class ids, "
                                 "other values map to ids in sorted order (or the order of classes)")
    task: Optional[Literal["classification", "causal-lm"]] = Field(
        None, description="default: classification; causal-lm: the text (a .txt file: one document per line) is "
        "packed into blocks of max_length tokens and evaluated by perplexity; it takes no label")
    split: Optional[DataSplit] = Field(None, description="held-out fractions; default test 0.1, validation 0.1")
    split_column: Optional[str] = Field(None, min_length=1, description="a column naming each row's split: train, "
                                        "validation (val, valid, dev, eval) or test")
    max_length: Optional[int] = Field(None, ge=2, le=8192, description="tokens per text at most, default 128 "
                                      "(batches pad to their longest row, not to this)")
    tokenizer: Optional[str] = Field(None, min_length=1, description="the model's folder with its tokenizer (read "
                                     "offline); default: the zoo model's own")
    batch_size: Optional[int] = Field(None, ge=1, le=65536, description="rows per train() batch, default 16 "
                                      "(stages re-cut to their own training.batch_size)")
    eval_batch_size: Optional[int] = Field(None, ge=1, le=65536, description="default 64")
    classes: Optional[list[str]] = Field(None, min_length=1, description="class names in id order (default: sorted)")
    padding: Optional[Literal["longest", "max_length"]] = Field(
        None, description="longest (default): each batch to its longest row, bucketed by length; max_length: every "
        "batch to max_length")
    drop_duplicates: Optional[bool] = Field(None, description="drop exact duplicate texts before splitting")
    vocab_size: Optional[int] = Field(None, ge=2, description="fold ids into a smaller vocabulary (tiny test models)")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("text", mode="before")
    @classmethod
    def _one_text_is_a_list(cls, text: Any) -> Any:
        return [text] if isinstance(text, str) else text

    @field_validator("path", "tokenizer")
    @classmethod
    def _no_nul(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and "\x00" in value:
            raise ValueError("a path cannot hold a NUL character")
        return value

    @model_validator(mode="after")
    def _one(self) -> "DataSource":
        given = [k for k in ("dataset", "factory", "path") if getattr(self, k) is not None]
        if self.dataset is not None and _looks_like_a_file(self.dataset):
            raise ValueError(f"dataset {self.dataset!r} looks like a file, but dataset: names a registered dataset "
                             f"(bbc-news, mnist-5k); for your own file write path: {self.dataset} (with text: and "
                             "label:)")
        if len(given) != 1:
            raise ValueError("give exactly one of dataset, factory or path" + (f" (got {', '.join(given)})" if given
                                                                                else ""))
        if self.path is None:
            stray = [k for k in _PATH_FIELDS if getattr(self, k) is not None]
            if stray:
                raise ValueError(f"{', '.join(stray)} describe a file given by path:; a dataset: or factory: takes "
                                 "its options in kwargs")
            return self
        if self.task == "causal-lm":
            return self._causal_lm()
        missing = [k for k in ("text", "label") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"path: needs {' and '.join(missing)}: the column(s) holding the text and the label")
        if self.split is not None and self.split_column is not None:
            raise ValueError("give split (fractions) or split_column, not both")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes {self.classes} repeat a name")
        return self

    def _causal_lm(self) -> "DataSource":
        """task: causal-lm reads text only: no label, classes or padding (blocks are packed full, not padded)."""
        stray = [k for k in ("label", "classes", "padding", "drop_duplicates", "vocab_size")
                 if getattr(self, k) is not None]
        if stray:
            raise ValueError(f"task causal-lm takes no {', '.join(stray)}: its labels are the next tokens of the "
                             "text itself")
        plain_text = self.format is None and self.path.lower().endswith((".txt", ".text"))
        if self.text is None and not plain_text:
            raise ValueError("task causal-lm on a table needs text: the column(s) holding the text (a .txt file "
                             "needs none: one document per line)")
        if plain_text and self.text is not None:
            raise ValueError(f"{self.path} is plain text (one document per line): it has no columns, so no text:")
        if plain_text and self.split_column is not None:
            raise ValueError(f"{self.path} is plain text: it has no split column; use split fractions")
        if self.split is not None and self.split_column is not None:
            raise ValueError("give split (fractions) or split_column, not both")
        return self

    def columns(self) -> list[str]:
        """The columns a `path:` source reads: text, label and split column."""
        return list(dict.fromkeys([*(self.text or []), *([self.label] if self.label else []),
                                   *([self.split_column] if self.split_column else [])]))


def _looks_like_a_file(name: str) -> bool:
    return "/" in name or "\\" in name or name.lower().endswith(_DATA_FILE_SUFFIXES)


class DeploySpec(SpecModel):
    """Deployment targets measured after the export (`unicompress.deploy`): the compressed ONNX file (and the native
    file, for a runtime that reads it: tflite, paddle-inference) on each runtime, against ONNX Runtime on the
    uncompressed model's own ONNX export (written beside it as ``<name>-fp32.onnx``), timed in interleaved rounds in
    one run on the data's example rows; the report names the fastest runtime whose outputs keep `tolerance`.

    Example (YAML): ``export: {deploy: {runtimes: [onnxruntime, openvino], batch: 32}}``.
    """

    runtimes: list[str] = Field(default_factory=lambda: ["onnxruntime", "openvino"], min_length=1,
                                description="runtime names (`unicompress bench --help` lists them)")
    batch: int = Field(32, ge=1, le=4096, description="rows per timed run (the example rows, repeated)")
    threads: int = Field(2, ge=1, le=256, description="intra-op / inference threads of every runtime")
    runs: int = Field(15, ge=3, le=10_000, description="timed rounds; medians are reported")
    tolerance: float = Field(0.99, gt=0, le=1, description="output agreement with the FP32 reference a runtime "
                             "must keep to be chosen: argmax agreement for classifiers, else cosine")

    @field_validator("runtimes")
    @classmethod
    def _known(cls, runtimes: list[str]) -> list[str]:
        from ..deploy.runtimes import known_runtimes  # the registry is data: nothing is imported to check names

        known = known_runtimes()
        unknown = [r for r in runtimes if r not in known]
        if unknown:
            raise ValueError(f"unknown runtime(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return list(dict.fromkeys(runtimes))


def _require_onnx(info: ValidationInfo, what: str) -> None:
    """An export option that works on the ONNX file, refused when `formats` writes none."""
    formats = info.data.get("formats")
    if formats is not None and ExportFormat.onnx not in formats:
        raise ValueError(f"{what}, but formats [{', '.join(f.value for f in formats)}] writes none; add onnx to "
                         "formats")


class ExportSpec(SpecModel):
    """What to write at the end; every file is written atomically."""

    formats: list[ExportFormat] = Field(default_factory=lambda: [ExportFormat.onnx])
    directory: str = Field("unicompress-out", min_length=1, description="where the files go; each is named "
                           "after the recipe's name, which cannot leave this directory")
    opset: int = Field(17, ge=13, le=21)
    embeddings: Literal["float", "int8", "int4"] = Field(
        "float", description="embedding tables (Gather on a float [rows, dim] initializer) in the ONNX file: float "
        "(as exported), int8 (per-row scales, standard ops: ONNX Runtime and OpenVINO read it) or int4 (per-32 "
        "block scales, com.microsoft.GatherBlockQuantized: ONNX Runtime and OpenVINO, not plain-opset runtimes); "
        "tables under 4096 elements stay float (unicompress.onnx.embeddings)")

    @field_validator("embeddings", "optimize")
    @classmethod
    def _rewrite_needs_onnx(cls, value: str, info: ValidationInfo) -> str:
        if value not in ("float", "none"):
            _require_onnx(info, f"{info.field_name}: {value} rewrites the ONNX file")
        return value

    optimize: Literal["none", "ort-transformers"] = Field(
        "none", description="kernel fusion of the ONNX file: none (as exported) or ort-transformers (ONNX Runtime's "
        "transformer optimizer: Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization where the "
        "graph allows; unicompress.onnx.fusion). The fused ops are com.microsoft contrib ops that ONNX Runtime "
        "alone runs: OpenVINO, TensorRT and plain-opset runtimes cannot read the file, so use it only for ONNX "
        "Runtime deployments. Needs a model with attention heads (refused before work otherwise); the file is "
        "rewritten only if ONNX Runtime's outputs match the unfused file on the example inputs")

    deploy: Optional[DeploySpec] = Field(None, description="measure the exported files on deployment runtimes "
                                         "and name the fastest that keeps the outputs (needs onnx in formats)")

    @field_validator("deploy")
    @classmethod
    def _deploy_needs_onnx(cls, deploy: Optional[DeploySpec], info: ValidationInfo) -> Optional[DeploySpec]:
        if deploy is not None:
            _require_onnx(info, "deploy measures against ONNX Runtime on the ONNX exports")
        others = [r for r in (deploy.runtimes if deploy is not None else []) if r != "onnxruntime"]
        if others and info.data.get("optimize", "none") != "none":
            raise ValueError(f"optimize: {info.data['optimize']} writes com.microsoft fused ops that only ONNX Runtime "
                             f"runs, but deploy.runtimes asks for {', '.join(others)}: drop optimize, or deploy on "
                             "onnxruntime alone")
        return deploy

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
