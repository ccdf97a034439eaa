"""PruningSpec: what to zero or remove, chosen how, and on what schedule."""
from __future__ import annotations

from enum import Enum
from typing import Any, Iterator, Literal, Optional

from pydantic import Field, model_validator

from .base import SPEC_VERSION, SpecModel
from .selector import LayerSelector
from .training import TrainingSpec


class Granularity(str, Enum):
    """The unit that is pruned."""

    unstructured = "unstructured"  # single weights
    n_m = "n_m"  # at least N zeros in every M consecutive weights along the input dimension
    neuron = "neuron"  # whole FFN neurons / output channels (rows of the [out, in] weight)
    head = "head"  # whole attention heads (Q/K/V rows and O columns of a head)
    block = "block"  # rectangular blocks of a weight matrix


class Criterion(str, Enum):
    """How importance is scored."""

    magnitude = "magnitude"  # |w| (unstructured) or the group norm (structured)
    movement = "movement"  # -w * grad accumulated in fine-tuning (Sanh et al. 2020)
    l1_regularized = "l1_regularized"  # L1 penalty during training, then magnitude
    l0_regularized = "l0_regularized"  # hard-concrete gates (Louizos et al. 2018)


class Norm(str, Enum):
    """Norm of a group of weights for structured criteria."""

    l1 = "l1"
    l2 = "l2"


class Scope(str, Enum):
    per_layer = "per_layer"  # each layer reaches the target sparsity
    global_ = "global"  # one threshold across all selected layers

    @classmethod
    def _missing_(cls, value: object):  # accept "global_" too
        return cls.global_ if value == "global_" else None


class ScheduleKind(str, Enum):
    one_shot = "one_shot"
    polynomial = "polynomial"  # s_t = s_f + (s_i - s_f) * (1 - progress)^power  (Zhu & Gupta 2017)


class PruningSchedule(SpecModel):
    """When sparsity is reached. One-shot prunes once; polynomial ramps up during training."""

    kind: ScheduleKind = ScheduleKind.one_shot
    initial_sparsity: float = Field(0.0, ge=0, lt=1)
    begin_step: int = Field(0, ge=0)
    end_step: int = Field(100, ge=1)
    frequency: int = Field(1, ge=1, description="update the masks every N steps")
    power: float = Field(3.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> "PruningSchedule":
        if self.end_step <= self.begin_step:
            raise ValueError(f"end_step ({self.end_step}) must be greater than begin_step ({self.begin_step})")
        return self


class PruningSpec(SpecModel):
    """Prune weights of the selected layers.

    Example (YAML)::

        technique: pruning
        granularity: n_m
        n: 2
        m: 4
    """

    technique: Literal["pruning"] = "pruning"
    version: Literal["1"] = SPEC_VERSION
    granularity: Granularity = Granularity.unstructured
    sparsity: Optional[float] = Field(None, ge=0, lt=1, description="fraction of the units removed; "
                                      "not used for n_m (sparsity is n/m)")
    n: Optional[int] = Field(None, ge=1, le=64, description="n_m: zeros per group")
    m: Optional[int] = Field(None, ge=2, le=64, description="n_m: group size")
    block_shape: Optional[tuple[int, int]] = Field(None, description="block: (rows, cols) of a block")
    criterion: Criterion = Criterion.magnitude
    norm: Norm = Norm.l2
    scope: Scope = Scope.per_layer
    schedule: PruningSchedule = Field(default_factory=PruningSchedule)
    regularization: float = Field(0.0, ge=0, le=100, description="penalty weight for l1/l0 criteria")
    remove_pruned: bool = Field(True, description="head/neuron: physically remove the pruned units "
                                "so the model gets smaller and faster")
    selector: LayerSelector = Field(default_factory=LayerSelector)
    training: Optional[TrainingSpec] = Field(None, description="needed by gradual and training-time criteria")

    @model_validator(mode="after")
    def _consistent(self) -> "PruningSpec":
        g = self.granularity
        if g is Granularity.n_m:
            if self.n is None or self.m is None:
                raise ValueError("granularity 'n_m' needs both n and m (e.g. n: 2, m: 4)")
            if self.n >= self.m:
                raise ValueError(f"n ({self.n}) must be smaller than m ({self.m})")
            if self.sparsity is not None and abs(self.sparsity - self.n / self.m) > 1e-9:
                raise ValueError(f"sparsity {self.sparsity} contradicts n/m = {self.n}/{self.m}; leave it out")
        else:
            if self.n is not None or self.m is not None:
                raise ValueError(f"n and m apply only to granularity 'n_m', not {g.value!r}")
            if self.sparsity is None:
                raise ValueError(f"granularity {g.value!r} needs sparsity in [0, 1)")
        if g is Granularity.block:
            if self.block_shape is None or min(self.block_shape) < 1:
                raise ValueError("granularity 'block' needs block_shape: [rows, cols], both >= 1")
        elif self.block_shape is not None:
            raise ValueError(f"block_shape applies only to granularity 'block', not {g.value!r}")
        if self.schedule.kind is ScheduleKind.polynomial and self.schedule.initial_sparsity > self.target_sparsity:
            raise ValueError("schedule.initial_sparsity must not exceed the target sparsity")
        trains = self.schedule.kind is ScheduleKind.polynomial or self.criterion in (
            Criterion.movement, Criterion.l1_regularized, Criterion.l0_regularized)
        if trains and self.training is None:
            raise ValueError(f"criterion {self.criterion.value!r} with schedule {self.schedule.kind.value!r} "
                             "trains the model: give training: {steps: ..., learning_rate: ...}")
        if trains and self.schedule.kind is ScheduleKind.polynomial and self.training is not None \
                and self.schedule.end_step > self.training.steps:
            raise ValueError(f"schedule.end_step ({self.schedule.end_step}) is after the last training step "
                             f"({self.training.steps})")
        return self

    @property
    def target_sparsity(self) -> float:
        """The fraction of weights (or units) zero at the end."""
        if self.granularity is Granularity.n_m:
            return self.n / self.m  # type: ignore[operator]
        return float(self.sparsity)  # type: ignore[arg-type]

    @property
    def trains(self) -> bool:
        """Whether this spec needs training data (gradual schedule or a training-time criterion)."""
        return self.schedule.kind is ScheduleKind.polynomial or self.criterion is not Criterion.magnitude

    def capability_items(self) -> Iterator[tuple[str, Any]]:
        yield "granularity", self.granularity.value
        yield "criterion", self.criterion.value
        yield "scope", self.scope.value
        yield "schedule.kind", self.schedule.kind.value
        if self.granularity in (Granularity.neuron, Granularity.head, Granularity.block):
            yield "norm", self.norm.value
        if self.granularity in (Granularity.neuron, Granularity.head) and self.remove_pruned:
            yield "remove_pruned", True
