"""Shared base of every spec: frozen, strict about unknown keys, versioned."""
from __future__ import annotations

from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict

SPEC_VERSION = "1"


class SpecModel(BaseModel):
    """Base of all spec objects: immutable, rejects unknown keys, validates defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True,
                              use_enum_values=False, str_strip_whitespace=True)

    def capability_items(self) -> Iterator[tuple[str, Any]]:
        """(field path, value) pairs a backend must support to honour this spec.

        Example: ``list(PruningSpec(granularity="n_m", n=2, m=4).capability_items())``
        contains ``("granularity", "n_m")``.
        """
        return iter(())
