"""DistillationSpec: train a student to imitate a frozen teacher."""
from __future__ import annotations

from enum import Enum
from typing import Any, Iterator, Literal, Optional

from pydantic import Field, model_validator

from .base import SPEC_VERSION, SpecModel
from .training import TrainingSpec


class DistillKind(str, Enum):
    response = "response"  # KL(teacher || student) on logits softened by a temperature
    feature = "feature"  # hidden states, with a learned projection when widths differ
    relation = "relation"  # self-attention distributions and value relations (MiniLM)


class FeatureLoss(str, Enum):
    mse = "mse"
    cosine = "cosine"


class StudentSpec(SpecModel):
    """Build the student from the teacher by keeping some of its Transformer layers."""

    keep_layers: Optional[list[int]] = Field(None, description="teacher layer indices to keep, in order")
    num_layers: Optional[int] = Field(None, ge=1, description="keep this many, evenly spaced")

    @model_validator(mode="after")
    def _one(self) -> "StudentSpec":
        if (self.keep_layers is None) == (self.num_layers is None):
            raise ValueError("give exactly one of keep_layers or num_layers")
        if self.keep_layers is not None:
            if not self.keep_layers:
                raise ValueError("keep_layers must not be empty")
            if any(i < 0 for i in self.keep_layers) or len(set(self.keep_layers)) != len(self.keep_layers) \
                    or sorted(self.keep_layers) != self.keep_layers:
                raise ValueError("keep_layers must be distinct, non-negative and increasing")
        return self

    def layers_to_keep(self, teacher_layers: int) -> list[int]:
        """The teacher layer indices the student keeps, in order.

        `num_layers` keeps evenly spaced layers including the first and the last:
        ``round(linspace(0, L - 1, n))`` (n = 1 keeps the last). Example:
        ``StudentSpec(num_layers=3).layers_to_keep(6)`` is ``[0, 2, 5]``.
        """
        if self.keep_layers is not None:
            if self.keep_layers[-1] >= teacher_layers:
                raise ValueError(f"keep_layers {self.keep_layers} names a layer the teacher lacks "
                                 f"(it has {teacher_layers})")
            return list(self.keep_layers)
        n = self.num_layers
        if n > teacher_layers:
            raise ValueError(f"num_layers {n} exceeds the teacher's {teacher_layers} layers")
        if n == 1:
            return [teacher_layers - 1]
        return [int(round(i * (teacher_layers - 1) / (n - 1))) for i in range(n)]


class DistillationSpec(SpecModel):
    """Distil a frozen teacher into the student.

    Loss = alpha * distillation + (1 - alpha) * task loss.

    Example (YAML)::

        technique: distillation
        kinds: [response, relation]
        temperature: 4
        student: {num_layers: 3}
        training: {steps: 500, learning_rate: 5.0e-5}
    """

    technique: Literal["distillation"] = "distillation"
    version: Literal["1"] = SPEC_VERSION
    kinds: list[DistillKind] = Field(default_factory=lambda: [DistillKind.response], min_length=1)
    temperature: float = Field(2.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation loss against the task loss")
    feature_loss: FeatureLoss = FeatureLoss.mse
    layer_map: Optional[list[tuple[int, int]]] = Field(
        None, description="feature/relation: (student layer, teacher layer) pairs; default maps evenly")
    projection: bool = Field(True, description="feature: learn a linear projection when widths differ")
    feature_weight: float = Field(1.0, ge=0, le=1000)
    relation_weight: float = Field(1.0, ge=0, le=1000)
    student: Optional[StudentSpec] = Field(None, description="build the student from the teacher; "
                                           "leave out when you pass a student model")
    training: TrainingSpec = Field(default_factory=TrainingSpec)

    @model_validator(mode="after")
    def _consistent(self) -> "DistillationSpec":
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError("kinds must not repeat")
        if self.layer_map is not None:
            if not self.layer_map:
                raise ValueError("layer_map must not be empty")
            if any(s < 0 or t < 0 for s, t in self.layer_map):
                raise ValueError("layer_map indices must be non-negative")
        return self

    def resolved_layer_map(self, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
        """(student layer, teacher layer) pairs for feature/relation losses.

        `layer_map` when given; otherwise student layer i maps to teacher layer
        ``round((i + 1) * T / S) - 1`` (the last maps to the last, as in MiniLM/TinyBERT).
        """
        if self.layer_map is not None:
            bad = [(s, t) for s, t in self.layer_map if s >= student_layers or t >= teacher_layers]
            if bad:
                raise ValueError(f"layer_map pairs {bad} exceed the student ({student_layers}) or "
                                 f"teacher ({teacher_layers}) layers")
            return [tuple(p) for p in self.layer_map]
        return [(i, int(round((i + 1) * teacher_layers / student_layers)) - 1) for i in range(student_layers)]

    def capability_items(self) -> Iterator[tuple[str, Any]]:
        for k in self.kinds:
            yield "kinds", k.value
        if DistillKind.feature in self.kinds:
            yield "feature_loss", self.feature_loss.value
        if self.student is not None:
            yield "student", "drop_layers"
