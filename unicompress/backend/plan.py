"""StagePlan: what the core decided one stage touches. The adapter carries it out; the judge checks it.

The planner (`unicompress.planner`) fills it from the spec, the model's layers and its structure, the
same way for every backend; an adapter reads `ctx.plan` instead of choosing layers itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ..specs.selector import LayerRole
from .types import AttentionInfo, FFNInfo, LayerInfo, TransformerStructure


@dataclass(frozen=True)
class StagePlan:
    """The resolved targets of one stage.

    `selected`: names of the layers the stage changes, in model order (weights of these kinds only:
    for pruning and quantization every selected layer is touched, none other). `layers`: every layer of
    the model with its resolved role. For head pruning `attention` lists the selected blocks; for
    neuron pruning `ffn` the selected FFN pairs and `rows` the selected Linears outside any pair or
    attention block (they lose output rows). `skipped` lists (layer, reason) for selected layers the stage
    leaves alone because the spec allowed partial coverage (`selector.allow_partial`) or its unit is not
    theirs (an FFN layer under head pruning). For quantization `settings` holds each selected layer's
    ``bits`` / ``granularity`` / ``scheme`` under the one override rule (`unicompress.planner.layer_settings`):
    adapters quantize each layer with these, never re-reading the overrides. For low rank `ranks` holds each
    selected layer's rank (`unicompress.reference.lowrank.rank_for`): only layers that are factorised are
    selected (those where it saves parameters, or all with `force`); the others are in `skipped` with why.
    """

    index: int
    technique: str
    selected: tuple[str, ...]
    layers: tuple[LayerInfo, ...]
    structure: Optional[TransformerStructure] = None
    attention: tuple[AttentionInfo, ...] = ()
    ffn: tuple[FFNInfo, ...] = ()
    rows: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = field(default=())
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    ranks: Mapping[str, int] = field(default_factory=dict)

    @property
    def roles(self) -> Mapping[str, LayerRole]:
        """Layer name -> resolved role."""
        return {layer.name: layer.role for layer in self.layers}

    def layer(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)
