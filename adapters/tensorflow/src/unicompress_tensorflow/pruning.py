"""PruningSpec -> tfmot.sparsity.keras (prune_low_magnitude, schedules, sparsity_m_by_n, block_size), carrying
out the core's plan (`ctx.plan.selected`: exactly these layers, Dense and MultiHeadAttention projections alike).

Native (TFMOT): unstructured magnitude on Dense kernels and on MultiHeadAttention's EinsumDense kernels (the
MHA is wrapped whole, with `get_prunable_weights` narrowed to the selected Q/K/V/O kernels: TFMOT's registry
would prune all four), N:M (`sparsity_m_by_n`) and blocks scored by the L1 norm (`block_size`, AVG pooling)
on Dense kernels, one-shot and polynomial schedules; the wrappers are stripped as TFMOT's `strip_pruning` does.
Emulated (`masks.py`, TF ops): N:M and blocks on EinsumDense kernels (TFMOT's N:M and block code takes rank-2
weights only), blocks scored by the L2 norm, low-rank factors; neuron and head pruning with the physical
rebuild (`structured.py`). Every selected layer's achieved sparsity is checked after a one-shot stage.

TFMOT pitfalls handled here:
- a schedule updates the masks only on steps where (step - begin_step) % frequency == 0; the default
  frequency=100 prunes nothing in a short run, and end_step is skipped unless it lands on the frequency. We
  always pass the spec's frequency (default 1), add the end_step update (`PolynomialDecayToEnd`, the core's
  `mask_update_due`) and verify the achieved sparsity.
- N:M masks are computed only at pruning step 1 (whatever the schedule).
- Dense kernels are [in, out]: TFMOT transposes for N:M (groups run along the input dim, as ours), and
  `block_size` is in kernel layout, so a neutral (rows, cols) block is TFMOT's (cols, rows).
- wrapping uses the graph replay (`graph.replay`), not `clone_model`, so models with constants in the graph
  and Lambda layers can be pruned.
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

from typing import Any, Optional, Sequence  # noqa: E402

import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude  # noqa: E402
from unicompress.backend.adapter import StageContext  # noqa: E402
from unicompress.backend.plan import StagePlan  # noqa: E402
from unicompress.backend.types import TaskData  # noqa: E402
from unicompress.errors import UnicompressError  # noqa: E402
from unicompress.specs import Criterion, Granularity, Norm, PruningSpec, ScheduleKind, Scope  # noqa: E402

from . import layers as L  # noqa: E402
from .discovery import MHA_PARTS  # noqa: E402
from .graph import is_graph_model, replay, unwrap  # noqa: E402
from .masks import EmulatedPruner  # noqa: E402
from .training import train  # noqa: E402

sparsity = tfmot.sparsity.keras
_PART_ATTR = dict(MHA_PARTS)


class PruningNotSupportedError(UnicompressError, ValueError):
    """A pruning setting this backend cannot honour on this model."""


def selected_dense(model: Any, spec: PruningSpec) -> list[str]:
    """Names of the layers the core's planner selects for `spec` on `model` (Dense and EinsumDense)."""
    from unicompress.planner import plan_stage

    from .backend import TensorFlowAdapter

    return list(plan_stage(TensorFlowAdapter(), model, spec).selected)


class PolynomialDecayToEnd(sparsity.PolynomialDecay):
    """TFMOT's PolynomialDecay that also updates the masks at `end_step`: the core's rule
    (`unicompress.reference.pruning.mask_update_due`), so the final sparsity is reached at end_step whatever the
    frequency. TFMOT alone skips end_step when (end_step - begin_step) % frequency != 0 and stops below target."""

    def _should_prune_in_step(self, step, begin_step, end_step, frequency):
        regular = super()._should_prune_in_step(step, begin_step, end_step, frequency)
        return tf.math.logical_or(regular, tf.math.equal(step, end_step))


def schedule_for(spec: PruningSpec) -> sparsity.PruningSchedule:
    """The TFMOT schedule of the spec (always with the spec's frequency; TFMOT's default is 100)."""
    s = spec.schedule
    if s.kind is ScheduleKind.one_shot:
        return sparsity.ConstantSparsity(spec.target_sparsity, begin_step=0, frequency=1)
    return PolynomialDecayToEnd(initial_sparsity=s.initial_sparsity, final_sparsity=spec.target_sparsity,
                                    begin_step=s.begin_step, end_step=s.end_step, power=s.power,
                                    frequency=s.frequency)


def prune_params(spec: PruningSpec) -> dict:
    """Keyword arguments of prune_low_magnitude for the spec's granularity."""
    params: dict = {"pruning_schedule": schedule_for(spec)}
    if spec.granularity is Granularity.n_m:
        params["sparsity_m_by_n"] = (spec.n, spec.m)  # TFMOT: (zeros, group size)
    elif spec.granularity is Granularity.block:
        rows, cols = spec.block_shape
        params["block_size"] = (cols, rows)  # kernel layout [in, out]
        params["block_pooling_type"] = "AVG"  # mean |w| ranks full blocks like their L1 norm
    return params


# ---- which layer goes where --------------------------------------------------------------------------------

def split_targets(model: Any, names: Sequence[str], spec: PruningSpec) -> tuple[list[str], dict[str, list[str]],
                                                                                list[str]]:
    """(top-level Dense layers TFMOT wraps, {MultiHeadAttention: its selected parts} TFMOT wraps, neutral
    names the emulated masks take)."""
    top = {unwrap(layer).name: unwrap(layer) for layer in model.layers}
    native_ok = not (spec.granularity is Granularity.block and spec.norm is Norm.l2)
    dense, mha, emulated = [], {}, []
    for name in names:
        layer = top.get(name)
        base, _, part = name.rpartition(".")
        owner = top.get(base)
        if native_ok and isinstance(layer, keras.layers.Dense):
            dense.append(name)
        elif native_ok and isinstance(owner, keras.layers.MultiHeadAttention) and part in _PART_ATTR \
                and spec.granularity is Granularity.unstructured:
            mha.setdefault(base, []).append(part)
        else:
            emulated.append(name)
    return dense, mha, emulated


def _narrowed(layer: Any, parts: Sequence[str]) -> Any:
    """The MHA with TFMOT's `get_prunable_weights` returning only the selected kernels."""
    def get_prunable_weights():
        return [getattr(layer, _PART_ATTR[p]).kernel for p in parts]

    layer.get_prunable_weights = get_prunable_weights
    return layer


def wrap(model: keras.Model, names: list[str], params: dict, mha: Optional[dict[str, list[str]]] = None
         ) -> keras.Model:
    """The model with prune_low_magnitude around the named Dense layers and the given MHA parts (TFMOT's
    documented per-layer wrapping, with the graph replayed instead of cloned from its config)."""
    chosen, mha = set(names), mha or {}

    def make(layer):
        if layer.name in chosen:
            return sparsity.prune_low_magnitude(layer, **params)
        if layer.name in mha:
            return sparsity.prune_low_magnitude(_narrowed(layer, mha[layer.name]), **params)
        return layer

    return replay(model, make)


def strip(model: keras.Model) -> keras.Model:
    """TFMOT's strip_pruning (the masked inner layers in place of the wrappers), by graph replay."""
    def make(layer):
        if isinstance(layer, PruneLowMagnitude):
            layer.pruning_obj.weight_mask_op()
            inner = layer.layer
            inner.__dict__.pop("get_prunable_weights", None)  # our narrowed list (or TFMOT's) must not linger
            return inner
        return layer

    return replay(model, make)


def wrappers(model: keras.Model) -> list[Any]:
    return [layer for layer in model.layers if isinstance(layer, PruneLowMagnitude)]


def mask_counts(model: keras.Model) -> tuple[int, int]:
    zeros = total = 0
    for w in wrappers(model):
        for _, mask, _ in w.pruning_vars:
            m = mask.numpy()
            zeros += int((m == 0).sum())
            total += m.size
    return zeros, total


def mask_sparsity(model: keras.Model, emulated: Optional[EmulatedPruner] = None) -> float:
    """Fraction of zeros over all masks of the pruning wrappers (and the emulated layers' kernels)."""
    zeros, total = mask_counts(model)
    if emulated is not None:
        z, n = emulated.zeros_and_size()
        zeros, total = zeros + z, total + n
    return zeros / total if total else 0.0


def update_masks_now(model: keras.Model, step: int) -> None:
    """One-shot: set every wrapper's step and run its own conditional mask update, then mask the weights."""
    for w in wrappers(model):
        w.pruning_step.assign(step)
        w.pruning_obj.conditional_mask_update()
        w.pruning_obj.weight_mask_op()


# ---- the handler ---------------------------------------------------------------------------------------

def apply_pruning(model: Any, spec: PruningSpec, data: Optional[TaskData], ctx: StageContext) -> Any:
    """Prune exactly the plan's layers as the spec says; returns the (new) pruned model."""
    if spec.scope is Scope.global_:
        raise PruningNotSupportedError("scope 'global': TFMOT prunes each layer to its own target; use per_layer")
    if spec.criterion is not Criterion.magnitude:
        raise PruningNotSupportedError(f"criterion {spec.criterion.value!r}: TFMOT prunes by magnitude only")
    if not is_graph_model(model):
        raise PruningNotSupportedError("TFMOT prunes functional or Sequential tf_keras models; a subclassed model "
                                       "must call prune_low_magnitude on its layers itself")
    plan = ctx.plan
    if spec.granularity in (Granularity.neuron, Granularity.head):
        from .structured import structured_prune

        return structured_prune(model, spec, plan, ctx)
    if not plan.selected:
        raise PruningNotSupportedError("the plan selects no layer")
    dense, mha, emulated = split_targets(model, plan.selected, spec)
    pruned = wrap(model, dense, prune_params(spec), mha) if dense or mha else model
    emu = EmulatedPruner(pruned, emulated, spec)
    if not spec.trains:
        update_masks_now(pruned, 1 if spec.granularity is Granularity.n_m else 0)
        emu.prune(spec.target_sparsity)
        ctx.log("sparsity", 0, mask_sparsity(pruned, emu))
    else:
        _train_pruned(pruned, spec, data, ctx, emu)
    out = strip(pruned) if dense or mha else pruned
    check_sparsity(out, plan, spec, ctx)
    return out


def _train_pruned(pruned: keras.Model, spec: PruningSpec, data: Optional[TaskData], ctx: StageContext,
                  emu: EmulatedPruner) -> None:
    """Gradual pruning inside training: the wrappers update masks in call(training=True) on schedule steps;
    the emulated masks follow the same schedule after each optimizer step."""
    for w in wrappers(pruned):
        w.pruning_step.assign(0)  # what UpdatePruningStep.on_train_begin does
    schedule = schedule_for(spec)
    nm = spec.granularity is Granularity.n_m

    def after(step: int) -> None:
        # the forward of this step incremented pruning_step to `step` and updated the masks if due
        due, target = schedule(tf.constant(step, tf.int64))
        due = (step == 1) if nm else bool(due)
        if due:
            emu.prune(float(target))
        else:
            emu.reapply()
        if due:
            ctx.log("sparsity", step, mask_sparsity(pruned, emu))

    train(pruned, data, spec.training, ctx, after_step=after, description="prune")
    for w in wrappers(pruned):  # the last update left unmasked weights (UpdatePruningStep.on_epoch_end)
        w.pruning_obj.weight_mask_op()
    emu.reapply()


def check_sparsity(model: Any, plan: StagePlan, spec: PruningSpec, ctx: StageContext) -> None:
    """Log each planned layer's achieved sparsity; after a one-shot stage each must be on target (unstructured:
    the target itself; N:M: n/m; blocks: some whole blocks, as edge blocks make the fraction of weights differ)."""
    stats = {s.name: s for s in L.describe(model)}
    off = []
    for name in plan.selected:
        s = stats[name]
        ctx.log(f"sparsity/{name}", 0, s.sparsity)
        if spec.trains:
            continue
        slack = 0.01 + 1.0 / max(s.params, 1)
        g = spec.granularity
        bad = (abs(s.sparsity - spec.target_sparsity) > slack if g is Granularity.unstructured else
               s.sparsity < spec.n / spec.m - slack if g is Granularity.n_m else
               spec.target_sparsity > 0 and s.sparsity == 0.0)
        if bad:
            off.append(f"{name} {s.sparsity:.4f}")
    if off:
        raise PruningNotSupportedError(f"pruning missed its target {spec.target_sparsity:.4f} on {len(off)} "
                                       f"planned layer(s): {', '.join(off[:6])}")
