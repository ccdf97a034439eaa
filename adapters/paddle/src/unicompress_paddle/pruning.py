"""PruningSpec on Paddle: PaddleSlim's UnstructuredPruner (magnitude, per-layer/global, blocks, gradual),
paddle.incubate.asp (N:M), and PaddleSlim's L1/L2 filter scoring + PruningPlan (neurons, heads).

Every handler carries out the core's plan (`ctx.plan`): exactly the planned Linears (unstructured, block, N:M),
the planned attention blocks (heads), FFN pairs and lone Linears (neurons), located by `ctx.plan.structure`.
Every handler records the keep-masks it applied (`training.record_masks`) so later training keeps them.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from unicompress.backend.adapter import StageContext
from unicompress.backend.plan import StagePlan
from unicompress.backend.types import AttentionInfo, FFNInfo, TaskData, count_nonzero
from unicompress.reference.pruning import mask_update_due, polynomial_sparsity
from unicompress.specs import Criterion, Granularity, PruningSpec, ScheduleKind, Scope

from . import compat
from .layers import compressible, host_view
from .training import record_masks, train


def planned_linears(model: Any, plan: StagePlan) -> dict[str, Any]:
    """name -> Linear of every layer the plan selected (the planner admits only this backend's weight kinds)."""
    layers = compressible(model)
    return {n: layers[n] for n in plan.selected}


def overall_sparsity(layers: dict[str, Any]) -> float:
    total = sum(int(np.prod(l.weight.shape)) for l in layers.values())
    zeros = total - sum(count_nonzero(host_view(l.weight)) for l in layers.values())
    return zeros / total if total else 0.0


def _neutral_masks(layers: dict[str, Any]) -> dict[str, np.ndarray]:
    return {n: (host_view(l.weight) != 0).T.copy() for n, l in layers.items()}


def uses_gmp(spec: PruningSpec) -> bool:
    """Whether PaddleSlim's GMPUnstructuredPruner can run this schedule itself: its ramp is the cubic
    polynomial (power 3) and it asserts more than 10 steps between ratio updates."""
    s = spec.schedule
    return (s.kind is ScheduleKind.polynomial and s.power == 3 and s.frequency > 10
            and s.begin_step % s.frequency == 0 and (s.end_step - s.begin_step) % s.frequency == 0)


def _unstructured_pruner(model: Any, layers: dict[str, Any], spec: PruningSpec, ratio: float):
    """A (fixed) PaddleSlim UnstructuredPruner, or GMPUnstructuredPruner, restricted to the selected weights."""
    compat.paddleslim()
    gmp = uses_gmp(spec)
    cls = compat.fixed_unstructured_pruner_class(gmp)
    keep = {l.weight.name for l in layers.values()}
    skip = lambda m: {p.name for p in m.parameters() if p.name not in keep}  # noqa: E731
    block = [1, 1]
    if spec.granularity is Granularity.block:
        rows, cols = spec.block_shape
        block = [int(cols), int(rows)]  # Paddle's weight is [in, out]: the neutral (rows, cols) block transposed
    kw = dict(skip_params_func=skip, local_sparsity=spec.scope is Scope.per_layer, sparse_block=block)
    with contextlib.redirect_stdout(io.StringIO()):  # PaddleSlim prints one line per parameter
        if gmp:
            s = spec.schedule
            pruner = cls(model, ratio=spec.target_sparsity, **kw, configs={
                "stable_iterations": s.begin_step, "pruning_iterations": s.end_step - s.begin_step,
                "tunning_iterations": 0, "resume_iteration": 0,
                "pruning_steps": (s.end_step - s.begin_step) // s.frequency, "initial_ratio": s.initial_sparsity})
        else:
            pruner = cls(model, mode="ratio", ratio=ratio, **kw)
    pruner.block_norm = spec.norm.value
    return pruner


def _magnitude(model: Any, spec: PruningSpec, data: TaskData, ctx: StageContext) -> Any:
    layers = planned_linears(model, ctx.plan)
    sched = spec.schedule
    if sched.kind is ScheduleKind.one_shot:
        pruner = _unstructured_pruner(model, layers, spec, spec.target_sparsity)
        pruner.step()
        pruner.detach()
        ctx.log("sparsity", 0, overall_sparsity(layers))
    elif uses_gmp(spec):
        pruner = _unstructured_pruner(model, layers, spec, sched.initial_sparsity)

        def on_step(step: int) -> None:  # GMPUnstructuredPruner keeps its own schedule
            before = pruner.ratio
            pruner.step()
            if pruner.ratio != before or step == 0:
                pruner.update_params()
                ctx.log("sparsity", step, overall_sparsity(layers))

        train(model, data, spec.training, ctx, on_step=on_step)
        pruner.ratio = spec.target_sparsity
        pruner.update_threshold()
        pruner._update_masks()
        pruner.detach()
        ctx.log("sparsity", spec.training.steps, overall_sparsity(layers))
    else:  # any power / frequency: the scheduled ratio is fed to UnstructuredPruner.step
        pruner = _unstructured_pruner(model, layers, spec, sched.initial_sparsity)

        def on_step(step: int) -> None:
            if not mask_update_due(step, sched.begin_step, sched.end_step, sched.frequency):
                return
            pruner.ratio = polynomial_sparsity(step, spec.target_sparsity, sched.initial_sparsity,
                                               sched.begin_step, sched.end_step, sched.power)
            pruner.step()
            pruner.update_params()
            ctx.log("sparsity", step, overall_sparsity(layers))

        train(model, data, spec.training, ctx, on_step=on_step)
        pruner.ratio = spec.target_sparsity  # the schedule ends at the target, whatever the last step was
        pruner.step()
        pruner.detach()
        ctx.log("sparsity", spec.training.steps, overall_sparsity(layers))
    record_masks(model, _neutral_masks(layers))
    return model


def _n_m(model: Any, spec: PruningSpec, data: TaskData, ctx: StageContext) -> Any:
    """paddle.incubate.asp.prune_model with `mask_1d`: N smallest |w| of every M along the input dim."""
    from paddle.incubate import asp

    layers = planned_linears(model, ctx.plan)
    keep = {l.weight.name for l in layers.values()}
    others = [p.name for p in model.parameters() if p.name not in keep]
    asp.set_excluded_layers(param_names=others, main_program=None)
    try:
        asp.prune_model(model, n=spec.n, m=spec.m, mask_algo="mask_1d", with_mask=False)
    finally:
        asp.reset_excluded_layers()  # ASP keeps the exclusions in process-global state
    ctx.log("sparsity", 0, overall_sparsity(layers))
    record_masks(model, _neutral_masks(layers))
    return model


def keep_vectors(spec: PruningSpec, ratio: float, values: list[np.ndarray]) -> list[np.ndarray]:
    """PaddleSlim filter scores -> one keep-vector per matrix of unit rows: per layer, or (scope: global)
    one ranking over the rows of all matrices stacked. Rows of different lengths are zero-padded to one
    length first: that leaves each row's L1/L2 norm as it is, so the ranking is by the unit norms."""
    scorer = compat.filter_scorer(spec.norm.value)
    if spec.scope is Scope.global_ and values:
        width = max(v.shape[1] for v in values)
        stacked = np.concatenate([np.pad(v, ((0, 0), (0, width - v.shape[1]))) for v in values])
        keep = scorer.cal_mask(ratio, compat.ScoringCollection("all", stacked)).astype(bool)
        return np.split(keep, np.cumsum([len(v) for v in values])[:-1])
    return [scorer.cal_mask(ratio, compat.ScoringCollection(str(i), v)).astype(bool) for i, v in enumerate(values)]


def _neutral(layer: Any) -> np.ndarray:
    return layer.weight.numpy().T  # Paddle's [in, out] -> neutral [out, in]


def _rows_out(plans: dict, masks: dict, name: str, layer: Any, keep: np.ndarray) -> None:
    """Plan: drop (or zero) the output rows `~keep` of a Linear: its weight columns (Paddle [in, out]) and bias."""
    plans[layer.weight] = (1, keep)
    if layer.bias is not None:
        plans[layer.bias] = (0, keep)
    masks[name] = np.repeat(keep[:, None], layer.weight.shape[0], 1)


def _cols_in(plans: dict, masks: dict, name: str, layer: Any, keep: np.ndarray) -> None:
    """Plan: drop (or zero) the input columns `~keep` of a Linear (rows of Paddle's [in, out] weight)."""
    plans[layer.weight] = (0, keep)
    masks[name] = np.repeat(keep[None, :], layer.weight.shape[1], 0)


def _resize(layers: dict[str, Any], names) -> None:
    """Keep Linear's bookkeeping in step with its sliced weight."""
    for name in names:
        w = layers[name].weight
        layers[name]._in_features, layers[name]._out_features = w.shape


def _neuron(model: Any, spec: PruningSpec, ratio: float, remove: bool, plan: StagePlan) -> float:
    """FFN neurons and lone Linears' output units: PaddleSlim's L1/L2 filter score on the rows of ffn_in
    (with its gate) or of the lone Linear ([out, in]), then PruningPlan slices (or zeroes) ffn_in's (and the
    gate's) output units + biases and ffn_out's inputs. Lone Linears' rows are only zeroed: nothing says
    which layer consumes them."""
    layers = compressible(model)
    pairs: tuple[FFNInfo, ...] = plan.ffn
    values = [np.concatenate([_neutral(layers[n]) for n in (p.ffn_in, p.gate) if n], axis=1) for p in pairs]
    values += [_neutral(layers[n]) for n in plan.rows]
    kept = keep_vectors(spec, ratio, values)
    plans, masks = {}, {}
    for pair, keep in zip(pairs, kept):
        for name in (pair.ffn_in, pair.gate):
            if name:
                _rows_out(plans, masks, name, layers[name], keep)
        _cols_in(plans, masks, pair.ffn_out, layers[pair.ffn_out], keep)
    row_plans, row_masks = {}, {}
    for name, keep in zip(plan.rows, kept[len(pairs):]):
        _rows_out(row_plans, row_masks, name, layers[name], keep)
    compat.apply_plan(model, plans, remove=remove)
    compat.apply_plan(model, row_plans, remove=False)
    if remove:
        _resize(layers, [n for p in pairs for n in p.layers])
    else:
        record_masks(model, masks)
    record_masks(model, row_masks)
    return 1.0 - float(np.concatenate(kept).mean()) if kept else 0.0


def head_rows(att: AttentionInfo) -> dict[str, list[np.ndarray]]:
    """Input layer -> the output rows (neutral [out, in]) of each head: Q/K/V rows of the head; for a packed
    QKV its rows in each of the q | k | v thirds; under grouped-query attention only Q (K/V heads are shared)."""
    d, h = att.head_dim, att.num_heads
    own = [np.arange(i * d, (i + 1) * d) for i in range(h)]
    if att.packed:
        return {att.query: [np.concatenate([r + j * h * d for j in range(3)]) for r in own]}
    if att.kv_heads != att.num_heads:
        return {att.query: own}
    return {n: own for n in (att.query, att.key, att.value)}


def _head_values(att: AttentionInfo, layers: dict[str, Any]) -> np.ndarray:
    """One row per head holding all its weights (its rows of every input projection, its O columns), so a
    filter scorer's row norm is the head norm of the spec; any layout (separate, packed, grouped-query)."""
    rows = head_rows(att)
    w = {n: _neutral(layers[n]) for n in rows}
    o = _neutral(layers[att.output])
    d = att.head_dim
    return np.stack([np.concatenate([w[n][rows[n][i]].ravel() for n in rows] + [o[:, i * d:(i + 1) * d].ravel()])
                     for i in range(att.num_heads)])


def _owner(model: Any, att: AttentionInfo) -> Any:
    """The layer whose `num_heads` drives the reshape: the parent of the query projection
    (paddle.nn.MultiHeadAttention, the zoo's SelfAttention)."""
    parent = att.query.rpartition(".")[0]
    return model if not parent else dict(model.named_sublayers())[parent]


def _head(model: Any, spec: PruningSpec, ratio: float, remove: bool, plan: StagePlan) -> float:
    """Attention heads: PaddleSlim's L1/L2 filter score per head, then PruningPlan slices (or zeroes)
    the head's Q/K/V output units + biases and O inputs; the attention's `num_heads` shrinks when heads are
    removed (Paddle's MultiHeadAttention reshapes with num_heads x head_dim; embed_dim stays the model width)."""
    layers = compressible(model)
    atts: tuple[AttentionInfo, ...] = plan.attention
    kept = keep_vectors(spec, ratio, [_head_values(a, layers) for a in atts])
    plans, masks = {}, {}
    for att, keep_h in zip(atts, kept):
        for name, per_head in head_rows(att).items():
            keep = np.ones(_neutral(layers[name]).shape[0], bool)
            for i in np.flatnonzero(~keep_h):
                keep[per_head[i]] = False
            _rows_out(plans, masks, name, layers[name], keep)
        _cols_in(plans, masks, att.output, layers[att.output], np.repeat(keep_h, att.head_dim))
    compat.apply_plan(model, plans, remove=remove)
    if remove:
        for att, keep_h in zip(atts, kept):
            _owner(model, att).num_heads = int(keep_h.sum())
        _resize(layers, [n for a in atts for n in a.layers])
    else:
        record_masks(model, masks)
    return 1.0 - float(np.concatenate(kept).mean()) if kept else 0.0


def prune(model: Any, spec: PruningSpec, data: TaskData, ctx: StageContext) -> Any:
    """PruningSpec handler."""
    if spec.criterion is not Criterion.magnitude:
        raise NotImplementedError(f"criterion {spec.criterion.value!r} is not supported by the paddle backend")
    g = spec.granularity
    if g in (Granularity.unstructured, Granularity.block):
        return _magnitude(model, spec, data, ctx)
    if g is Granularity.n_m:
        if spec.schedule.kind is not ScheduleKind.one_shot:
            raise NotImplementedError("N:M sparsity is one-shot on the paddle backend (its sparsity is n/m)")
        return _n_m(model, spec, data, ctx)
    return _structured(model, spec, data, ctx, _neuron if g is Granularity.neuron else _head)


def _structured(model: Any, spec: PruningSpec, data: TaskData, ctx: StageContext, unit) -> Any:
    """Neurons or heads, one-shot or gradual: during training the units are zeroed at each mask update
    with the scheduled ratio (zeroed units score 0, so they stay pruned); at the end the target ratio is
    applied and, with remove_pruned, the units are sliced away."""
    sched = spec.schedule
    if sched.kind is ScheduleKind.polynomial:
        def on_step(step: int) -> None:
            if not mask_update_due(step, sched.begin_step, sched.end_step, sched.frequency):
                return
            ratio = polynomial_sparsity(step, spec.target_sparsity, sched.initial_sparsity,
                                        sched.begin_step, sched.end_step, sched.power)
            ctx.log("sparsity", step, unit(model, spec, ratio, False, ctx.plan))

        train(model, data, spec.training, ctx, on_step=on_step)
    achieved = unit(model, spec, spec.target_sparsity, spec.remove_pruned, ctx.plan)
    ctx.log("sparsity", spec.training.steps if sched.kind is ScheduleKind.polynomial else 0, achieved)
    return model
