"""The planner: what each stage touches, decided once in the core for every backend.

From a spec, the model's layers (names, kinds, shapes) and its structure, `plan_stage` resolves
  - the layers a selector chooses (roles from `unicompress.structure.assign_roles`),
  - for head pruning the attention blocks, for neuron pruning the FFN pairs and lone Linears,
  - per-layer quantization settings under the one override rule (`layer_settings`),
  - for low rank each selected layer's rank and whether factorising it saves parameters (`ranks`),
and refuses, before any work and the same way on every backend, what cannot be honoured on this model:
a structural spec on a model without a known structure, removal of blocks the backend cannot shrink,
N:M groups that do not tile a layer, blocks larger than a layer, head sparsity that leaves no head, and
selected layers of kinds the backend cannot change (unless `selector.allow_partial`).

Example::

    plan = plan_stage(adapter, model, PruningSpec(granularity="head", sparsity=0.5))
    [a.block for a in plan.attention]
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .backend.plan import StagePlan
from .backend.types import LayerInfo, TransformerStructure
from .data.checks import non_finite_tensors
from .errors import LayerSelectionError, NonFiniteWeightsError, Problem, SpecValidationError, StructureError
from .reference.lowrank import no_saving_reason, rank_for, saves_parameters
from .specs import (DistillationSpec, FineTuneSpec, Granularity, LowRankSpec, PruningSpec, QuantizationSpec,
                    StructureDeclaration)
from .specs.selector import LayerRole
from .structure import assign_roles, declared_structure
from .structure.roles import factorised_base

_DECLARE_HINT = ("declare it in the recipe, e.g.\n    structure:\n      num_heads: 12\n      roles: {\"*.attn.q\": query, "
                 "\"*.attn.k\": key, \"*.attn.v\": value, \"*.attn.o\": attention_output, \"*.mlp.fc1\": ffn_in, "
                 "\"*.mlp.fc2\": ffn_out}\n  (or pass compress(..., structure=StructureDeclaration(...)))")


def resolve_structure(adapter: Any, model: Any,
                      declared: Optional[StructureDeclaration] = None) -> Optional[TransformerStructure]:
    """The structure stages use: the declared one (checked against the model) or the discovered one."""
    discovered = adapter.structure(model)
    if declared is None:
        return discovered
    return declared_structure(declared, adapter.layers(model), discovered)


def layer_settings(spec: QuantizationSpec, name: str) -> dict[str, Any]:
    """The quantization settings of one layer under the override rule.

    The rule: every override whose pattern matches the layer applies, in the order written, each one's
    given fields replacing the earlier value (so later overrides win field by field); `skip` from any
    matching override keeps the layer float. Returns ``{"skip", "bits", "granularity", "scheme"}``.
    Example: overrides ``[{pattern: "*", bits: 4}, {pattern: "*.key", bits: 8}]`` give ``*.key`` 8 bits.
    """
    import fnmatch

    out: dict[str, Any] = {"skip": False, "bits": spec.bits, "granularity": spec.granularity, "scheme": spec.scheme}
    for o in spec.overrides:
        if not fnmatch.fnmatchcase(name, o.pattern):
            continue
        out["skip"] = out["skip"] or o.skip
        for key in ("bits", "granularity", "scheme"):
            if getattr(o, key) is not None:
                out[key] = getattr(o, key)
    return out


def plan_stage(adapter: Any, model: Any, spec: Any, index: int = 0,
               structure: Optional[TransformerStructure] = None) -> StagePlan:
    """Resolve what `spec` touches on `model` (see the module docstring); raise before work if it cannot.

    `structure` overrides discovery (a declared structure, already resolved by `resolve_structure`).
    """
    st = structure if structure is not None else adapter.structure(model)
    layers = tuple(assign_roles(adapter.layers(model), st))
    where = f"stages[{index}]"
    selector = getattr(spec, "selector", None)
    if selector is None or isinstance(spec, (DistillationSpec, FineTuneSpec)):
        return StagePlan(index, spec.technique, (), layers, st)
    chosen = [layer for layer in layers if selector.matches(layer.name, layer.role)]
    if not chosen:
        raise LayerSelectionError(_no_match(where, layers, st, adapter))
    if isinstance(spec, PruningSpec):
        return _plan_pruning(adapter, spec, index, layers, chosen, st)
    usable, partial = _split_kinds(chosen, adapter.weight_kinds_for(spec))
    if isinstance(spec, QuantizationSpec):
        settings = {layer.name: layer_settings(spec, layer.name) for layer in usable}
        skipped_by_override = tuple((n, "override skip: kept float") for n, s in settings.items() if s["skip"])
        selected = tuple(layer.name for layer in usable if not settings[layer.name]["skip"])
        _refuse_partial(where, selector, partial, adapter, len(usable))
        return StagePlan(index, spec.technique, selected, layers, st, skipped=tuple(partial) + skipped_by_override,
                         settings={n: settings[n] for n in selected})
    if isinstance(spec, LowRankSpec):
        _refuse_partial(where, selector, partial, adapter, len(usable))
        return _plan_low_rank(adapter, model, spec, index, layers, usable, partial, st)
    return StagePlan(index, spec.technique, tuple(layer.name for layer in chosen), layers, st)


# ---- pruning ------------------------------------------------------------------------------------------
def _plan_pruning(adapter: Any, spec: PruningSpec, index: int, layers: Sequence[LayerInfo],
                  chosen: list[LayerInfo], st: Optional[TransformerStructure]) -> StagePlan:
    where = f"stages[{index}]"
    g = spec.granularity
    if g in (Granularity.unstructured, Granularity.n_m, Granularity.block):
        usable, partial = _split_kinds(chosen, adapter.weight_kinds_for(spec))
        _refuse_partial(where, spec.selector, partial, adapter, len(usable))
        problems = _shape_problems(where, spec, usable)
        if problems:
            raise SpecValidationError(problems)
        return StagePlan(index, spec.technique, tuple(layer.name for layer in usable), layers, st,
                         skipped=tuple(partial))
    if st is None or not (st.attention or st.ffn):
        raise StructureError(
            f"{where}: granularity {g.value!r} prunes whole {'heads' if g is Granularity.head else 'FFN neurons'}, "
            f"but no Transformer structure was found in this model ({_found(layers)}); {_DECLARE_HINT}")
    names = {layer.name for layer in chosen}
    factorised = sorted({b for b in (factorised_base(layer.name) for layer in layers) if b is not None}
                        & ({n for a in st.attention for n in a.layers} | {n for f in st.ffn for n in f.layers}))
    if factorised:
        raise StructureError(f"{where}: granularity {g.value!r} needs whole projections, but {factorised[0]} was "
                             "factorised by low rank; prune heads/neurons before the low_rank stage")
    if g is Granularity.head:
        return _plan_heads(spec, index, layers, chosen, names, st)
    return _plan_neurons(adapter, spec, index, layers, chosen, names, st)


def _plan_heads(spec: PruningSpec, index: int, layers: Sequence[LayerInfo], chosen: list[LayerInfo],
                names: set, st: TransformerStructure) -> StagePlan:
    where = f"stages[{index}]"
    blocks = [a for a in st.attention if names & set(a.layers)]
    if not blocks:
        raise StructureError(f"{where}: granularity 'head' found {len(st.attention)} attention block(s) "
                             f"({st.summary()}), but the selector chose none of their layers")
    problems = []
    for a in blocks:
        k = round(spec.target_sparsity * a.num_heads)
        group = a.num_heads // a.kv_heads
        if a.kv_heads != a.num_heads and round(spec.target_sparsity * group) == 0:
            problems.append(Problem(f"{where}.sparsity", spec.sparsity,
                                    f"block {a.block} shares each K/V head among {group} query heads (grouped-query "
                                    f"attention): heads are pruned per group, and {spec.sparsity} of {group} rounds "
                                    f"to none; use sparsity >= {0.5 / group:.3f}"))
            break
        if a.kv_heads != a.num_heads and round(spec.target_sparsity * group) >= group:
            problems.append(Problem(f"{where}.sparsity", spec.sparsity,
                                    f"block {a.block} shares each K/V head among {group} query heads (grouped-query "
                                    f"attention): heads are pruned per group, and {spec.sparsity} of {group} removes "
                                    f"every head of a group; use sparsity < {(group - 0.5) / group:.3f}"))
            break
        if k >= a.num_heads:
            problems.append(Problem(f"{where}.sparsity", spec.sparsity,
                                    f"block {a.block} has {a.num_heads} heads: sparsity {spec.sparsity} removes "
                                    f"{k}, leaving none; use sparsity < {(a.num_heads - 0.5) / a.num_heads:.3f}"))
            break
    if problems:
        raise SpecValidationError(problems)
    if spec.remove_pruned:
        _refuse_unremovable(where, "heads", [(f"attention block {a.block} ({a.query})", a.note)
                                             for a in blocks if not a.removable])
    in_blocks = {n for a in blocks for n in a.layers}
    skipped = tuple((layer.name, "not an attention projection: granularity 'head' prunes attention heads")
                    for layer in chosen if layer.name not in in_blocks)
    selected = tuple(layer.name for layer in layers if layer.name in in_blocks)
    notes = (("shared blocks: one set of weights serves every block, so pruning a head prunes it everywhere",)
             if st.shared_blocks else ())
    return StagePlan(index, spec.technique, selected, tuple(layers), st, attention=tuple(blocks),
                     skipped=skipped, notes=notes)


def _plan_neurons(adapter: Any, spec: PruningSpec, index: int, layers: Sequence[LayerInfo],
                  chosen: list[LayerInfo], names: set, st: TransformerStructure) -> StagePlan:
    where = f"stages[{index}]"
    pairs = tuple(f for f in st.ffn if f.ffn_in in names)
    in_pairs = {n for f in pairs for n in f.layers}
    in_attention = {n for a in st.attention for n in a.layers}
    rows = tuple(layer.name for layer in chosen if layer.name not in in_pairs and layer.name not in in_attention
                 and layer.role is LayerRole.other and layer.kind in adapter.weight_kinds_for(spec))
    if not pairs and not rows:
        raise StructureError(f"{where}: granularity 'neuron' found {len(st.ffn)} FFN pair(s) ({st.summary()}), "
                             f"but the selector chose no ffn_in layer of them; select role ffn_in or {_DECLARE_HINT}")
    if spec.remove_pruned:
        _refuse_unremovable(where, "neurons", [(f"FFN pair {f.block} ({f.ffn_in})", f.note)
                                               for f in pairs if not f.removable])
    skipped = tuple((layer.name, "attention projection: prune it with granularity 'head'") for layer in chosen
                    if layer.name in in_attention) + tuple(
        (layer.name, f"{layer.role.value} outside an FFN pair: neuron pruning takes FFN pairs and lone Linears")
        for layer in chosen if layer.name not in in_pairs and layer.name not in in_attention
        and layer.name not in rows)
    notes = tuple(f"{n}: output rows zeroed, not removed (no layer is known to consume them)" for n in rows
                  if spec.remove_pruned)
    selected = tuple(layer.name for layer in layers if layer.name in in_pairs or layer.name in rows)
    return StagePlan(index, spec.technique, selected, tuple(layers), st, ffn=pairs, rows=rows, skipped=skipped,
                     notes=notes)


def _shape_problems(where: str, spec: PruningSpec, usable: Sequence[LayerInfo]) -> list[Problem]:
    """Refusals that depend only on the spec and the layer shapes (the same on every backend)."""
    out = []
    for layer in usable:
        if len(layer.shape) != 2:
            continue
        rows, cols = layer.shape
        if spec.granularity is Granularity.n_m and cols % spec.m:
            out.append(Problem(f"{where}.m", spec.m, f"layer {layer.name} has input width {cols}, not a multiple "
                               f"of m={spec.m}: its groups of m would not tile it; choose m dividing {cols} or "
                               "exclude the layer"))
        if spec.granularity is Granularity.block and (spec.block_shape[0] > rows or spec.block_shape[1] > cols):
            out.append(Problem(f"{where}.block_shape", list(spec.block_shape), f"layer {layer.name} is "
                               f"{rows}x{cols}: a block must fit inside it; choose a smaller block or exclude it"))
    return out[:8]


# ---- low rank ---------------------------------------------------------------------------------------------
def _plan_low_rank(adapter: Any, model: Any, spec: LowRankSpec, index: int, layers: Sequence[LayerInfo],
                   usable: list[LayerInfo], partial: list[tuple[str, str]],
                   st: Optional[TransformerStructure]) -> StagePlan:
    """Per usable layer its rank (`reference.lowrank.rank_for` on the neutral [out, in] weight) and whether it is
    factorised (it saves parameters, or `force`). Factors of an earlier low-rank stage are left as they are.
    NaN/inf weights are refused here, before any SVD (LAPACK on inf can end the process, issue 13)."""
    factors = low_rank_factors(layers)
    earlier = [(layer.name, f"a factor of {factors[layer.name]} from an earlier low-rank stage: left as it is")
               for layer in usable if layer.name in factors]
    todo = [layer for layer in usable if layer.name not in factors]
    weights = adapter.weights(model, [layer.name for layer in todo]) if todo else {}
    _refuse_non_finite(f"stages[{index}]", weights)
    ranks: dict[str, int] = {}
    unsaved: list[tuple[str, str]] = []
    for layer in todo:
        w = np.asarray(weights[layer.name])
        r = rank_for(w, spec.rank, spec.energy)
        if spec.force or saves_parameters(w.shape, r):
            ranks[layer.name] = r
        else:
            unsaved.append((layer.name, no_saving_reason(w.shape, r)))
    notes = () if ranks else (f"no selected layer is factorised: {len(unsaved)} would not save parameters and "
                              f"{len(earlier)} are factors already (see skipped)",)
    return StagePlan(index, spec.technique, tuple(ranks), tuple(layers), st,
                     skipped=tuple(partial) + tuple(earlier) + tuple(unsaved), notes=notes, ranks=ranks)


def low_rank_factors(layers: Sequence[LayerInfo]) -> dict[str, str]:
    """Factor name -> the layer it replaced, for the pairs an earlier low-rank stage left: ``X.0`` [r, in] and
    ``X.1`` [out, r] (or ``X.first`` / ``X.second``) where no layer ``X`` is left and the two shapes compose."""
    by_name = {layer.name: layer for layer in layers}
    out: dict[str, str] = {}
    for first, second in ((".0", ".1"), (".first", ".second")):
        for name, layer in by_name.items():
            base = name[: -len(first)] if name.endswith(first) else None
            partner = by_name.get(f"{base}{second}") if base is not None else None
            if partner is None or base in by_name or len(layer.shape) != 2 or len(partner.shape) != 2:
                continue
            if layer.shape[0] == partner.shape[1]:  # [r, in] then [out, r]
                out[name] = out[partner.name] = base
    return out


def _refuse_non_finite(where: str, weights: dict[str, Any]) -> None:
    bad = non_finite_tensors(weights)
    if bad:
        raise NonFiniteWeightsError(f"{where}: {len(bad)} selected layer(s) hold NaN or inf weights, which low-rank "
                                    f"factorisation (an SVD) cannot take: {', '.join(bad[:8])}"
                                    f"{' ...' if len(bad) > 8 else ''}. Nothing was run; load finite weights.")


# ---- refusals -------------------------------------------------------------------------------------------
def _split_kinds(chosen: Sequence[LayerInfo], kinds) -> tuple[list[LayerInfo], list[tuple[str, str]]]:
    usable = [layer for layer in chosen if layer.kind in kinds]
    partial = [(layer.name, f"layer kind {layer.kind!r}: this backend changes only {', '.join(sorted(kinds))}")
               for layer in chosen if layer.kind not in kinds]
    return usable, partial


def _refuse_partial(where: str, selector: Any, partial: list[tuple[str, str]], adapter: Any, usable: int) -> None:
    if not partial:
        return
    shown = "\n".join(f"  - {n}: {why}" for n, why in partial[:10])
    more = f"\n  ... and {len(partial) - 10} more" if len(partial) > 10 else ""
    if usable == 0:  # allow_partial or not: a stage that would change nothing is no success
        raise LayerSelectionError(f"{where}.selector chooses {len(partial)} layer(s), none of which backend "
                                  f"{adapter.name!r} can change:\n{shown}{more}\nSelect layers of the kinds it "
                                  f"changes ({', '.join(sorted(adapter.weight_kinds))}).")
    if selector.allow_partial:
        return
    raise LayerSelectionError(f"{where}.selector chooses {len(partial)} layer(s) that backend {adapter.name!r} "
                              f"cannot change:\n{shown}{more}\nExclude them (selector.exclude / roles), or set "
                              "selector.allow_partial: true to compress the rest and list these in the report.")


def _refuse_unremovable(where: str, unit: str, blocks: list[tuple[str, str]]) -> None:
    if not blocks:
        return
    shown = "\n".join(f"  - {b}: {note or 'the backend cannot remove them'}" for b, note in blocks[:10])
    raise StructureError(f"{where}.remove_pruned: true, but the {unit} of {len(blocks)} selected block(s) cannot be "
                         f"physically removed:\n{shown}\nSet remove_pruned: false to zero them (the model keeps its "
                         "size), or exclude those blocks with the selector.")


def _found(layers: Sequence[LayerInfo]) -> str:
    kinds: dict[str, int] = {}
    for layer in layers:
        kinds[layer.kind] = kinds.get(layer.kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in kinds.items()) or "no compressible layer"


def _no_match(where: str, layers: Sequence[LayerInfo], st: Optional[TransformerStructure], adapter: Any) -> str:
    if not layers:
        return (f"{where}.selector has nothing to choose from: backend {adapter.name!r} found no compressible layer "
                "in this model (no Linear/Dense/Embedding it knows)")
    shown = ", ".join(f"{layer.name} ({layer.role.value})" for layer in layers[:8])
    found = st.summary() if st is not None else "no Transformer structure found"
    return (f"{where}.selector matches no layer of this model; its layers include: {shown}"
            f"{' ...' if len(layers) > 8 else ''} [{found}]")

