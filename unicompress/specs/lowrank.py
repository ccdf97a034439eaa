"""LowRankSpec: replace a Linear by two thinner ones from its truncated SVD."""
from __future__ import annotations

from typing import Any, Iterator, Literal, Optional

from pydantic import Field, model_validator

from .base import SPEC_VERSION, SpecModel
from .selector import LayerSelector


class LowRankSpec(SpecModel):
    """Factorise W ([out, in]) as U_r diag(s_r) V_r^T, i.e. Linear(in, r) then Linear(r, out).

    Give `rank` (the same for every layer) or `energy` (keep the smallest rank whose singular
    values hold that fraction of sum(s^2)). Layers where factorising would not save parameters
    (r * (in + out) >= in * out) are left alone unless `force` is set.

    Example (YAML)::

        technique: low_rank
        energy: 0.9
    """

    technique: Literal["low_rank"] = "low_rank"
    version: Literal["1"] = SPEC_VERSION
    rank: Optional[int] = Field(None, ge=1, le=1_000_000)
    energy: Optional[float] = Field(None, gt=0, le=1)
    force: bool = False
    selector: LayerSelector = Field(default_factory=LayerSelector)

    @model_validator(mode="after")
    def _one(self) -> "LowRankSpec":
        if (self.rank is None) == (self.energy is None):
            raise ValueError("give exactly one of rank or energy")
        return self

    def capability_items(self) -> Iterator[tuple[str, Any]]:
        yield "by", "rank" if self.rank is not None else "energy"
