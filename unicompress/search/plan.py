"""A per-layer plan (which candidates each layer takes) and the ordinary recipe that carries it out.

A plan maps a layer name to the indices of the search candidates it takes: at most one pruning and one
quantization candidate. `plan_recipe` writes it as stages any backend runs: one pruning stage per pruning
candidate used (selector = those layers' exact names), then one quantization stage over every quantized
layer with per-layer overrides of bits / granularity / scheme (mixed precision).
"""
from __future__ import annotations

import glob
from typing import Mapping, Sequence

from ..specs import LayerOverride, LayerSelector, PruningSpec, QuantizationSpec, Recipe
from ..specs.search import PER_LAYER_QUANT_FIELDS, SearchSpec

Plan = dict[str, tuple[int, ...]]


def label(candidate: object) -> str:
    """A short name for a candidate: ``int8``, ``int4``, ``prune50%``, ``2:4``, ``heads25%``."""
    if isinstance(candidate, QuantizationSpec):
        return f"int{candidate.bits}" + ("" if candidate.mode.value == "weight_only" else f"-{candidate.mode.value}")
    g = candidate.granularity.value
    if g == "n_m":
        return f"{candidate.n}:{candidate.m}"
    prefix = {"unstructured": "prune", "neuron": "neurons", "head": "heads", "block": "blocks"}[g]
    return f"{prefix}{candidate.sparsity:.0%}"


def with_choice(plan: Plan, layer: str, index: int, candidates: Sequence[object]) -> Plan:
    """`plan` with `layer` taking candidate `index`, replacing a candidate of the same technique."""
    kind = candidates[index].technique
    kept = tuple(i for i in plan.get(layer, ()) if candidates[i].technique != kind)
    out = dict(plan)
    out[layer] = tuple(sorted(kept + (index,)))
    return out


def canonical(plan: Mapping[str, Sequence[int]]) -> Plan:
    """The plan without empty entries, layers sorted: two equal plans compare and hash alike."""
    return {k: tuple(sorted(v)) for k, v in sorted(plan.items()) if v}


def plan_key(plan: Mapping[str, Sequence[int]]) -> str:
    """A string naming the plan (for caches and Optuna)."""
    return ";".join(f"{k}={','.join(map(str, v))}" for k, v in canonical(plan).items())


def plan_stages(plan: Mapping[str, Sequence[int]], spec: SearchSpec) -> list:
    """The stages that carry out `plan` (empty for an empty plan)."""
    plan = canonical(plan)
    roles = list(spec.selector.roles)
    stages: list = []
    for i, cand in enumerate(spec.candidates):
        if isinstance(cand, PruningSpec):
            names = [n for n, idx in plan.items() if i in idx]
            if names:
                stages.append(cand.model_copy(update={"selector": _exact(names, roles)}))
    quantized = {n: spec.candidates[j] for n, idx in plan.items() for j in idx
                 if isinstance(spec.candidates[j], QuantizationSpec)}
    if quantized:
        base = next(iter(quantized.values()))
        overrides = [LayerOverride(pattern=glob.escape(n), **{f: getattr(q, f) for f in PER_LAYER_QUANT_FIELDS
                                                             if getattr(q, f) != getattr(base, f)})
                     for n, q in quantized.items()]
        overrides = [o for o in overrides if o.bits is not None or o.granularity is not None or o.scheme is not None]
        stages.append(base.model_copy(update={"selector": _exact(list(quantized), roles), "overrides": overrides}))
    return stages


def plan_recipe(base: Recipe, plan: Mapping[str, Sequence[int]], spec: SearchSpec, name: str = "",
                evaluate: bool = True, export: bool = True) -> Recipe:
    """The base recipe (model, data, backend, export) with the plan's stages: an ordinary recipe file.

    Validated again from plain data, so what is written is exactly what `load_recipe` reads back."""
    from ..recipe_io import validate_data

    stages = plan_stages(plan, spec)
    if not stages:
        raise ValueError("an empty plan has no stages: the uncompressed model is the result")
    data = base.model_dump(mode="json")
    data.update(stages=[s.model_dump(mode="json") for s in stages], evaluate=evaluate,
                name=name or base.name, export=data["export"] if export else None)
    return validate_data(data, Recipe, "searched plan")


def _exact(names: Sequence[str], roles: list) -> LayerSelector:
    """A selector choosing exactly these layers (glob characters in names escaped)."""
    return LayerSelector(include=[glob.escape(n) for n in names], roles=roles)
