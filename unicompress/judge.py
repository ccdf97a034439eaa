"""The per-run judge: after each stage, the spec's post-conditions checked on the result, cheaply.

The conformance suite is the deep judge (against the numpy reference, on the zoo and the corpus); this one
runs on every `compress()` call, on the user's own model, and fails the stage (the input model is never
touched) when the result is not what the plan says:
  - pruning: achieved sparsity of every planned layer (per layer, or over all of them for global scope),
    the N:M pattern, and for heads/neurons that whole units are zero on both sides of each pair;
  - removal: the pruned units' parameters are really gone (the count drops by exactly what the removed
    units held) and the removed model's outputs equal the masked model's on a few inputs (the masked model
    is rebuilt from the pre-stage copy by zeroing the removed units' attention-output / ffn_out columns);
  - quantization: the layers stored at low bit width are exactly the planned ones, at the planned bits;
  - every stage: the output shape is unchanged.
Each check carries its figure, and the report lists them all.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .backend.plan import StagePlan
from .backend.types import Inputs, LayerStats
from .specs import Granularity, LowRankSpec, PruningSpec, QuantizationSpec, Scope
from .structure.roles import factorised_base

#: |removed - masked| allowed on the outputs (float32 models; the issue's bound)
REMOVAL_ATOL = 1e-4
#: |achieved - target| sparsity allowed per layer beyond one unit of rounding
SPARSITY_TOL = 0.01


@dataclass(frozen=True)
class Check:
    """One post-condition of one stage: whether it held (None: not checked, with the reason) and its figure."""

    stage: int
    name: str
    passed: Optional[bool]
    figure: str

    def __str__(self) -> str:
        mark = {True: "ok", False: "FAILED", None: "not checked"}[self.passed]
        return f"{self.name}: {mark} - {self.figure}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BeforeStage:
    """What the judge keeps from just before a stage: describe() rows, probe outputs and (for removal) a copy."""

    stats: list[LayerStats]
    outputs: Optional[np.ndarray]
    model_copy: Any = None


def needs_copy(spec: Any) -> bool:
    """Whether the judge needs the pre-stage model to rebuild the masked twin (one-shot head/neuron removal)."""
    return (isinstance(spec, PruningSpec) and spec.granularity in (Granularity.head, Granularity.neuron)
            and spec.remove_pruned and not spec.trains)


def before_stage(adapter: Any, model: Any, spec: Any, probe: Optional[Inputs]) -> BeforeStage:
    """Snapshot what the checks of `spec` compare against."""
    outputs = np.asarray(adapter.run(model, probe)) if probe is not None else None
    return BeforeStage(adapter.describe(model), outputs, adapter.copy(model) if needs_copy(spec) else None)


def judge_stage(adapter: Any, model: Any, spec: Any, plan: StagePlan, before: BeforeStage,
                after_stats: Sequence[LayerStats], probe: Optional[Inputs]) -> list[Check]:
    """Every post-condition of one stage on its result `model`."""
    i = plan.index
    checks: list[Check] = []
    after_out = np.asarray(adapter.run(model, probe)) if probe is not None else None
    if after_out is None:
        checks.append(Check(i, "output shape", None, "no example inputs were given (pass data or export_example)"))
    else:
        same = after_out.shape == before.outputs.shape
        finite = bool(np.isfinite(after_out).all())
        checks.append(Check(i, "output shape", same and finite,
                            f"{before.outputs.shape} -> {after_out.shape}{'' if finite else ', non-finite outputs'}"))
    stats = {s.name: s for s in after_stats}
    old = {s.name: s for s in before.stats}
    if isinstance(spec, PruningSpec):
        if spec.granularity in (Granularity.head, Granularity.neuron):
            checks += _structured(adapter, model, spec, plan, before, stats, old, probe, after_out)
        else:
            checks += _sparsity(spec, plan, stats, old)
            if spec.granularity is Granularity.n_m:
                checks.append(_nm_pattern(adapter, model, spec, plan))
    elif isinstance(spec, QuantizationSpec):
        checks.append(_quantized_layers(spec, plan, stats))
    elif isinstance(spec, LowRankSpec):
        checks.append(_factorised_layers(plan, stats))
    return checks


# ---- pruning ------------------------------------------------------------------------------------------
def _sparsity(spec: PruningSpec, plan: StagePlan, stats: dict, old: dict) -> list[Check]:
    target = spec.target_sparsity
    rows = [(n, stats[n], old.get(n)) for n in plan.selected if n in stats]
    missing = [n for n in plan.selected if n not in stats]
    if missing:
        return [Check(plan.index, "sparsity", False, f"planned layers missing after the stage: {', '.join(missing[:4])}")]
    if spec.scope is Scope.global_:
        zeros = sum(s.params - s.nonzero for _, s, _ in rows)
        total = sum(s.params for _, s, _ in rows)
        got = zeros / total if total else 0.0
        return [Check(plan.index, "sparsity", abs(got - target) <= SPARSITY_TOL,
                      f"{got:.4f} over {len(rows)} planned layers (target {target:.4f}, global)")]
    bad = []
    for name, s, o in rows:
        slack = SPARSITY_TOL + 1.0 / max(s.params, 1)
        floor = target - slack
        ceiling = max(target, o.sparsity if o is not None else 0.0) + slack
        if not floor <= s.sparsity <= ceiling:
            bad.append(f"{name} {s.sparsity:.4f}")
    got = [s.sparsity for _, s, _ in rows]
    figure = (f"{min(got):.4f}..{max(got):.4f} on {len(rows)}/{len(rows)} planned layers (target {target:.4f})"
              if got else "no planned layer")
    if bad:
        figure = f"off target on {len(bad)}/{len(rows)} layers: {', '.join(bad[:4])} (target {target:.4f})"
    return [Check(plan.index, "sparsity", not bad and bool(rows), figure)]


def _nm_pattern(adapter: Any, model: Any, spec: PruningSpec, plan: StagePlan) -> Check:
    weights = adapter.weights(model, list(plan.selected))
    bad = []
    for name, w in weights.items():
        groups = (np.asarray(w).reshape(w.shape[0], -1, spec.m) == 0).sum(-1)
        if (groups < spec.n).any():
            bad.append(f"{name} ({int((groups < spec.n).sum())} groups)")
    return Check(plan.index, "n:m pattern", not bad,
                 f"every group of {spec.m} has >= {spec.n} zeros on {len(weights)} layers" if not bad
                 else f"groups with fewer than {spec.n} zeros: {', '.join(bad[:4])}")


def _units(spec: PruningSpec, width: int, groups: int = 1) -> int:
    """Units a per-layer spec prunes of `width` (per K/V group under grouped-query attention)."""
    return groups * int(round(spec.target_sparsity * width / groups))


def _structured(adapter: Any, model: Any, spec: PruningSpec, plan: StagePlan, before: BeforeStage,
                stats: dict, old: dict, probe: Optional[Inputs], after_out: Optional[np.ndarray]) -> list[Check]:
    removing = spec.remove_pruned
    after_w = adapter.weights(model, [n for n in plan.selected if n in stats])
    before_w = adapter.weights(before.model_copy, list(plan.selected)) if before.model_copy is not None else None
    units, problems, removed_params, masks = [], [], 0, {}
    for unit in _unit_groups(plan):
        kept, pruned, width, why = _unit_state(unit, after_w, before_w, old, removing)
        if why:
            problems.append(why)
            continue
        units.append((unit, pruned, width))
        if removing:
            removed_params += sum(old[n].params - stats[n].params for n in set(unit.layers))
            masks.update(unit.masked_twin(before_w, kept))
    for name in plan.rows:  # lone Linears: output rows zeroed (never removed: nothing is known to consume them)
        if name not in after_w:
            problems.append(f"{name}: a planned layer is missing after the stage")
            continue
        zero = ~after_w[name].any(axis=1)
        units.append((None, [int(i) for i in np.flatnonzero(zero)], after_w[name].shape[0]))
    checks = []
    total_units = sum(w for _, _, w in units)
    total_pruned = sum(len(p) for _, p, _ in units)
    target = spec.target_sparsity
    if spec.scope is Scope.global_:
        ok = not problems and abs(total_pruned - round(target * total_units)) <= max(1, len(units))
    else:
        ok = not problems and all(abs(len(p) - _units(spec, w, u.groups if u else 1)) <= 1 for u, p, w in units)
    kind = "heads" if spec.granularity is Granularity.head else "neurons"
    figure = (f"{total_pruned}/{total_units} {kind} {'removed' if removing else 'zeroed'} in {len(units)} "
              f"block(s) (target {target:.3f})" + (f", {len(plan.rows)} lone layer(s) zeroed" if plan.rows else ""))
    checks.append(Check(plan.index, f"{kind} pruned", ok, figure if not problems else "; ".join(problems[:3])))
    paired = [(u, p) for u, p, _ in units if u is not None]
    if removing and paired and not problems:
        expected = sum(u.params_per_unit(before_w) * len(p) for u, p in paired)
        expected += sum(old[n].params - stats[n].params for u, _ in paired for n in u.kv)  # GQA K/V heads
        checks.append(Check(plan.index, "parameters removed", removed_params == expected and expected > 0,
                            f"{removed_params:,} fewer weights (the removed units held {expected:,})"))
        if spec.trains:
            checks.append(Check(plan.index, "removed equals masked", None, "the stage trains the weights"))
        elif plan.rows:
            checks.append(Check(plan.index, "removed equals masked", None, "lone Linears' rows are zeroed with their "
                                "biases, which the masked twin (weights only) cannot mirror"))
        elif probe is None or after_out is None:
            checks.append(Check(plan.index, "removed equals masked", None, "no example inputs were given"))
        else:
            adapter.set_weights(before.model_copy, masks)
            twin = np.asarray(adapter.run(before.model_copy, probe))
            diff = float(np.abs(twin - after_out).max()) if twin.shape == after_out.shape else float("inf")
            checks.append(Check(plan.index, "removed equals masked", diff <= REMOVAL_ATOL,
                                f"max |removed - masked| = {diff:.2e} on {len(after_out)} inputs "
                                f"(allowed {REMOVAL_ATOL:.0e})"))
    return checks


@dataclass
class _Unit:
    """One prunable group: an attention block's heads or an FFN pair's neurons, in neutral [out, in] terms."""

    inputs: tuple[str, ...]  # layers whose output rows are the units (Q/K/V or packed QKV; ffn_in, gate)
    output: str  # the layer whose input columns are the units (attention output; ffn_out)
    size: int  # rows (and columns) per unit: head_dim, or 1 for a neuron
    packed: bool = False
    kv: tuple[str, ...] = ()  # grouped-query K/V layers (own head count): not matched unit by unit
    groups: int = 1  # grouped-query attention: query heads are pruned in equal numbers per K/V group

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.inputs + self.kv + (self.output,)))

    def unit_rows(self, w: np.ndarray) -> np.ndarray:
        """[units, size * in] view of the first input layer's rows (the query part of a packed QKV)."""
        if self.packed:
            w = w[: w.shape[0] // 3]
        return w.reshape(-1, self.size * w.shape[1])

    def params_per_unit(self, before_w: dict) -> int:
        per = 0
        for n in self.inputs:
            per += self.size * before_w[n].shape[1] * (3 if self.packed else 1)
        per += self.size * before_w[self.output].shape[0]
        return per

    def masked_twin(self, before_w: dict, kept: np.ndarray) -> dict[str, np.ndarray]:
        """The output layer with the pruned units' columns zeroed (their contribution gone)."""
        w = before_w[self.output].copy()
        cols = np.repeat(~kept, self.size)
        w[:, cols] = 0.0
        return {self.output: w}


def _unit_groups(plan: StagePlan) -> list[_Unit]:
    out = []
    for a in plan.attention:
        gqa = a.num_kv_heads is not None and a.num_kv_heads != a.num_heads
        inputs = (a.query,) if (a.packed or gqa) else (a.query, a.key, a.value)
        out.append(_Unit(inputs, a.output, a.head_dim, a.packed, kv=(a.key, a.value) if gqa else (),
                         groups=a.kv_heads if gqa else 1))
    for f in plan.ffn:
        out.append(_Unit((f.ffn_in,) + ((f.gate,) if f.gate else ()), f.ffn_out, 1))
    return out


def _unit_state(unit: _Unit, after_w: dict, before_w: Optional[dict], old: dict,
                removing: bool) -> tuple[Optional[np.ndarray], list[int], int, str]:
    """(kept mask, pruned unit indices, unit count before, problem) of one group."""
    first = unit.inputs[0]
    if first not in after_w or unit.output not in after_w:
        return None, [], 0, f"{first}: a planned layer is missing after the stage"
    now_rows = unit.unit_rows(after_w[first])
    if not removing:
        width = now_rows.shape[0]
        zero_in = ~now_rows.any(axis=1)
        out_cols = after_w[unit.output].reshape(after_w[unit.output].shape[0], width, unit.size)
        zero_out = ~out_cols.any(axis=(0, 2))
        if not zero_in.any():
            return None, [], width, f"{first}: no unit is zero"
        if (zero_in & ~zero_out).any():
            return None, [], width, (f"{unit.output}: {int((zero_in & ~zero_out).sum())} unit(s) zeroed in {first} "
                                     "keep their columns here (the pair is pruned on different axes)")
        return ~zero_in, [int(i) for i in np.flatnonzero(zero_in)], width, ""
    old_rows = unit.unit_rows(before_w[first])
    kept = _match_rows(old_rows, now_rows)
    if kept is None:
        return None, [], old_rows.shape[0], (f"{first}: the rows left after removal are not rows of the layer "
                                             "before it, in order (the wrong units or axis were removed)")
    out_w = after_w[unit.output]
    if out_w.shape[1] != int(kept.sum()) * unit.size:
        return None, [], old_rows.shape[0], (f"{unit.output}: {out_w.shape[1]} input columns after removal, but "
                                             f"{int(kept.sum()) * unit.size} units' worth remain in {first}")
    return kept, [int(i) for i in np.flatnonzero(~kept)], old_rows.shape[0], ""


def _match_rows(old: np.ndarray, new: np.ndarray) -> Optional[np.ndarray]:
    """Kept-mask over `old`'s rows such that old[kept] == new, matched in order (None when impossible)."""
    kept = np.zeros(old.shape[0], dtype=bool)
    j = 0
    for row in new:
        while j < old.shape[0] and not np.array_equal(old[j], row):
            j += 1
        if j == old.shape[0]:
            return None
        kept[j] = True
        j += 1
    return kept


# ---- quantization and low rank ---------------------------------------------------------------------------
def _quantized_layers(spec: QuantizationSpec, plan: StagePlan, stats: dict) -> Check:
    """The layers stored below 32 bits are exactly the planned ones (selected minus `skip` overrides)."""
    planned = set(plan.selected)
    low = {n: s.bits for n, s in stats.items() if s.bits < 32}
    extra = sorted(set(low) - planned)
    missing = sorted(n for n in planned - set(low) if n in stats)
    widths = sorted(set(low.values()))
    figure = (f"{len(low)} layers stored at {'/'.join(map(str, widths)) or '-'} bits, {len(planned)} planned "
              f"({len(plan.skipped)} kept float by the plan)")
    if extra:
        figure += f"; unplanned: {', '.join(extra[:4])}"
    if missing:
        figure += f"; still float: {', '.join(missing[:4])}"
    return Check(plan.index, "quantized layers", not extra and not missing, figure)


def _factorised_layers(plan: StagePlan, stats: dict) -> Check:
    planned = set(plan.selected)
    factorised = {b for b in map(factorised_base, stats) if b is not None and b not in stats}
    extra = sorted(factorised - planned)
    return Check(plan.index, "factorised layers", not extra,
                 f"{len(factorised)} of {len(planned)} planned layers factorised"
                 + (f"; unplanned: {', '.join(extra[:4])}" if extra else ""))
