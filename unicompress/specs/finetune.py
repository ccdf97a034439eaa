"""FineTuneSpec: plain task training, e.g. to recover accuracy after pruning."""
from __future__ import annotations

from typing import Any, Iterator, Literal

from pydantic import Field

from .base import SPEC_VERSION, SpecModel
from .training import TrainingSpec


class FineTuneSpec(SpecModel):
    """Train the model on the task loss; pruned weights stay zero (masks are kept during training).

    Example (YAML)::

        technique: finetune
        training: {steps: 300, learning_rate: 3.0e-5}
    """

    technique: Literal["finetune"] = "finetune"
    version: Literal["1"] = SPEC_VERSION
    training: TrainingSpec = Field(default_factory=TrainingSpec)

    def capability_items(self) -> Iterator[tuple[str, Any]]:
        yield "training.distributed", self.training.distributed.value
