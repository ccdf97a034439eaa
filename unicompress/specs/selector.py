"""LayerSelector: which layers of a model a spec touches, by name glob and role."""
from __future__ import annotations

import fnmatch
from enum import Enum
from typing import Iterable, Protocol, TypeVar

from pydantic import Field

from .base import SpecModel


class LayerRole(str, Enum):
    """What a layer does inside a Transformer; adapters fill this from the model's structure."""

    query = "query"
    key = "key"
    value = "value"
    qkv = "qkv"  # one packed Q/K/V projection (nn.MultiheadAttention in_proj, GPT-2 c_attn)
    attention_output = "attention_output"
    ffn_in = "ffn_in"
    ffn_gate = "ffn_gate"  # the gate of a gated FFN (SwiGLU): same neurons as ffn_in
    ffn_out = "ffn_out"
    embedding = "embedding"
    classifier = "classifier"
    pooler = "pooler"
    other = "other"


#: Roles touched when a selector names none: every Linear/Dense of the encoder, but not the
#: embeddings (tiny compute, large accuracy cost) nor the classifier head or pooler.
DEFAULT_ROLES: tuple[LayerRole, ...] = (LayerRole.query, LayerRole.key, LayerRole.value, LayerRole.qkv,
                                        LayerRole.attention_output, LayerRole.ffn_in, LayerRole.ffn_gate,
                                        LayerRole.ffn_out, LayerRole.other)


class LayerLike(Protocol):
    """What `LayerSelector.select` reads of a layer (a `LayerInfo`, or an adapter's own record)."""

    name: str
    role: LayerRole


_Layer = TypeVar("_Layer", bound=LayerLike)


class LayerSelector(SpecModel):
    """Chooses the layers a spec applies to.

    A layer is selected when its role is in `roles`, its name matches one of `include`
    (shell-style globs, e.g. ``"*.attention.*"``) and none of `exclude`.
    """

    include: list[str] = Field(default_factory=lambda: ["*"], description="name globs to include")
    exclude: list[str] = Field(default_factory=list, description="name globs to exclude")
    roles: list[LayerRole] = Field(default_factory=lambda: list(DEFAULT_ROLES),
                                   description="layer roles to include; default skips embeddings, "
                                               "pooler and classifier head")
    allow_partial: bool = Field(False, description="when some selected layers cannot take the spec (a layer "
                                "kind the backend cannot change, a block outside any attention/FFN), "
                                "compress the others and list the rest in the report instead of refusing")

    def matches(self, name: str, role: LayerRole | str) -> bool:
        """True when a layer of this name and role is selected.

        Example: ``LayerSelector(include=["*ffn*"]).matches("l0.ffn.in", "ffn_in")`` is True.
        """
        role = LayerRole(role)
        if role not in self.roles:
            return False
        if not any(fnmatch.fnmatchcase(name, pat) for pat in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, pat) for pat in self.exclude)

    def select(self, layers: Iterable[_Layer]) -> list[_Layer]:
        """The layers (objects with `.name` and `.role`) this selector chooses, in order."""
        return [layer for layer in layers if self.matches(layer.name, layer.role)]
