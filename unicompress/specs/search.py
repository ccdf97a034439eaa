"""SearchSpec: the ``search:`` section of a search file (`unicompress search`): what to try per layer, the
metric's tolerance, the objective, the strategy and its budget.

A search file is a recipe without ``stages:`` (the search writes them) plus this section::

    name: tiny-search
    backend: torch
    model: {zoo: tiny-bert}
    data: {dataset: bbc-news}
    search:
      tolerance: 0.01          # at most 1 point of accuracy lost on the validation split
      objective: bytes         # parameter bytes at their bit widths (or nonzero, params, latency)
      trials: 20
      candidates:
        - {technique: quantization, mode: weight_only, bits: 8}
        - {technique: quantization, mode: weight_only, bits: 4}
        - {technique: pruning, sparsity: 0.5}
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field, model_validator

from .base import SpecModel
from .pruning import PruningSpec, ScheduleKind
from .quantization import QuantizationSpec, QuantMode
from .selector import LayerSelector

Candidate = Annotated[Union[PruningSpec, QuantizationSpec], Field(discriminator="technique")]

#: quantization fields a per-layer override may vary; every other field must agree across the candidates,
#: because a recipe has one quantization stage (mixed precision is expressed by its overrides)
PER_LAYER_QUANT_FIELDS = ("bits", "granularity", "scheme")


class SearchSpec(SpecModel):
    """What `unicompress search` tries and how it judges a plan."""

    candidates: list[Candidate] = Field(
        default_factory=lambda: [QuantizationSpec(mode="weight_only", bits=8),
                                 QuantizationSpec(mode="weight_only", bits=4),
                                 PruningSpec(sparsity=0.5)],
        min_length=1, max_length=16,
        description="per-layer choices: one-shot pruning and/or quantization specs without selector; a layer "
                    "takes at most one pruning and one quantization candidate")
    selector: LayerSelector = Field(default_factory=LayerSelector, description="the layers searched")
    metric: str = Field("accuracy", min_length=1, description="key of the backend's evaluate() result")
    lower_is_better: bool = Field(False, description="the metric is a loss (drop = value - baseline)")
    tolerance: float = Field(0.01, ge=0, le=1e6, description="largest metric drop allowed on validation")
    objective: Literal["bytes", "nonzero", "params", "latency"] = Field(
        "bytes", description="minimised: parameter bytes at their bit widths (dense), non-zero parameters, "
                             "parameters, or latency on `runtime` relative to the uncompressed model (each plan's "
                             "ONNX export timed against the baseline's in one interleaved run)")
    runtime: str = Field("onnxruntime", min_length=1, description="latency objective: the runtime that times the "
                         "exports (unicompress bench --help lists them)")
    latency_batch: int = Field(32, ge=1, le=4096, description="latency objective: rows per timed run")
    latency_runs: int = Field(7, ge=3, le=1000, description="latency objective: timed rounds per plan (medians)")
    threads: int = Field(2, ge=1, le=256, description="latency objective: the runtime's threads")
    strategy: Literal["greedy", "optuna"] = "greedy"
    sampler: Literal["nsga2", "tpe"] = Field("nsga2", description="optuna: the multi-objective sampler")
    trials: int = Field(20, ge=1, le=100_000, description="combined plans evaluated (sensitivity runs excluded)")
    time_budget_s: Optional[float] = Field(None, gt=0, description="stop starting trials after this many seconds")
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _usable(self) -> "SearchSpec":
        if self.objective == "latency":
            from ..deploy.runtimes import known_runtimes  # data only: nothing imported

            if self.runtime not in known_runtimes():
                raise ValueError(f"runtime {self.runtime!r} is unknown; known: {', '.join(known_runtimes())}")
        quant = [c for c in self.candidates if isinstance(c, QuantizationSpec)]
        for i, c in enumerate(self.candidates):
            if c.selector != LayerSelector():
                raise ValueError(f"candidates[{i}] has a selector: the search chooses the layers (use search.selector)")
            if isinstance(c, PruningSpec) and (c.trains or c.schedule.kind is not ScheduleKind.one_shot):
                raise ValueError(f"candidates[{i}]: pruning candidates must be one-shot without training")
            if isinstance(c, QuantizationSpec) and (c.mode is QuantMode.qat or c.overrides):
                raise ValueError(f"candidates[{i}]: quantization candidates cannot be qat or have overrides")
        if quant:
            fixed = lambda q: q.model_dump(exclude={*PER_LAYER_QUANT_FIELDS, "selector"})  # noqa: E731
            if any(fixed(q) != fixed(quant[0]) for q in quant[1:]):
                raise ValueError("quantization candidates may differ only in " + ", ".join(PER_LAYER_QUANT_FIELDS)
                                 + " (one quantization stage with per-layer overrides holds them all)")
        dumps = [c.model_dump_json() for c in self.candidates]
        if len(set(dumps)) != len(dumps):
            raise ValueError("candidates repeat")
        return self
