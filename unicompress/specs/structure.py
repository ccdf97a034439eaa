"""StructureDeclaration: the Transformer structure a user declares when discovery cannot know it.

Used as a recipe's ``structure:`` (or ``compress(..., structure=...)``); `unicompress.structure.declared`
turns it into a TransformerStructure for one model and checks it against the model's layers.
"""
from __future__ import annotations

from typing import Optional

from pydantic import Field, model_validator

from .base import SpecModel
from .selector import LayerRole

_DECLARABLE = {LayerRole.query, LayerRole.key, LayerRole.value, LayerRole.qkv, LayerRole.attention_output,
               LayerRole.ffn_in, LayerRole.ffn_gate, LayerRole.ffn_out, LayerRole.embedding,
               LayerRole.pooler, LayerRole.classifier, LayerRole.other}


class AttentionDeclaration(SpecModel):
    """One attention block, by layer name. Give `qkv` for a packed projection instead of query/key/value."""

    query: Optional[str] = None
    key: Optional[str] = None
    value: Optional[str] = None
    qkv: Optional[str] = None
    output: str
    num_heads: Optional[int] = Field(None, ge=1, description="default: the declaration's num_heads")
    num_kv_heads: Optional[int] = Field(None, ge=1, description="grouped-query attention: K/V heads")
    kind: str = Field("self", pattern="^(self|cross)$")

    @model_validator(mode="after")
    def _one_form(self) -> "AttentionDeclaration":
        split = [self.query, self.key, self.value]
        if self.qkv is None and None in split:
            raise ValueError("give query, key and value, or qkv for a packed projection")
        if self.qkv is not None and any(split):
            raise ValueError("give qkv or query/key/value, not both")
        return self


class FFNDeclaration(SpecModel):
    """One feed-forward pair by layer name (`gate` for gated FFNs)."""

    ffn_in: str
    ffn_out: str
    gate: Optional[str] = None


class StructureDeclaration(SpecModel):
    """Where a model's attention heads and FFN pairs are, when unicompress cannot discover it."""

    num_heads: Optional[int] = Field(None, ge=1, description="heads of every declared attention block")
    roles: dict[str, LayerRole] = Field(default_factory=dict,
                                        description="layer-name glob -> role; blocks by the name's last number")
    attention: list[AttentionDeclaration] = Field(default_factory=list)
    ffn: list[FFNDeclaration] = Field(default_factory=list)
    classifier: Optional[str] = Field(None, description="the task head's final layer")

    @model_validator(mode="after")
    def _roles_known(self) -> "StructureDeclaration":
        """Every declared role is one a layer can have; something is declared."""
        bad = [f"{g}: {r.value}" for g, r in self.roles.items() if r not in _DECLARABLE]
        if bad:
            raise ValueError(f"roles cannot declare {bad}")
        if not (self.roles or self.attention or self.ffn or self.classifier):
            raise ValueError("structure declares nothing: give roles, attention, ffn or classifier")
        return self
