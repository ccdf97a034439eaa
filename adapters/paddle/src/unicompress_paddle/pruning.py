"""PruningSpec on Paddle: PaddleSlim's UnstructuredPruner (magnitude, per-layer/global, blocks, gradual),
paddle.incubate.asp (N:M), and PaddleSlim's L1/L2 filter scoring + PruningPlan (neurons, heads).

Every handler records the keep-masks it applied (`training.record_masks`) so later training keeps them.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData, count_nonzero
from unicompress.reference.pruning import polynomial_sparsity
from unicompress.specs import Criterion, Granularity, PruningSpec, ScheduleKind, Scope

from . import compat
from .layers import compressible, host_view, layer_infos, structure
from .training import record_masks, train


def selected_linears(model: Any, spec: PruningSpec) -> dict[str, Any]:
    """name -> Linear chosen by the spec's selector (embeddings never: they are not Linear weights)."""
    layers = compressible(model)
    return {i.name: layers[i.name] for i in layer_infos(model)
            if i.kind == "linear" and spec.selector.matches(i.name, i.role)}


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
    layers = selected_linears(model, spec)
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
            if step < sched.begin_step or step > sched.end_step or (step - sched.begin_step) % sched.frequency:
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

    layers = selected_linears(model, spec)
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
    one ranking over the rows of all matrices stacked (every unit row has the same length)."""
    scorer = compat.filter_scorer(spec.norm.value)
    if spec.scope is Scope.global_ and values:
        keep = scorer.cal_mask(ratio, compat.ScoringCollection("all", np.concatenate(values))).astype(bool)
        return np.split(keep, np.cumsum([len(v) for v in values])[:-1])
    return [scorer.cal_mask(ratio, compat.ScoringCollection(str(i), v)).astype(bool) for i, v in enumerate(values)]


def _neuron(model: Any, spec: PruningSpec, ratio: float, remove: bool) -> float:
    """FFN neurons: PaddleSlim's L1/L2 filter score on the rows of ffn_in ([out, in]), then PruningPlan
    slices (or zeroes) ffn_in's columns + bias and ffn_out's input rows."""
    st = structure(model)
    layers = compressible(model)
    chosen = selected_linears(model, spec)
    pairs = [p for p in st.ffn if p.ffn_in in chosen or p.ffn_out in chosen]
    values = [layers[p.ffn_in].weight.numpy().T for p in pairs]  # neutral [out, in]: one row per neuron
    kept = keep_vectors(spec, ratio, values)
    plans, masks = {}, {}
    for pair, value, keep in zip(pairs, values, kept):
        lin, lout = layers[pair.ffn_in], layers[pair.ffn_out]
        plans.update({lin.weight: (1, keep), lin.bias: (0, keep), lout.weight: (0, keep)})
        masks[pair.ffn_in] = np.repeat(keep[:, None], value.shape[1], 1)
        masks[pair.ffn_out] = np.repeat(keep[None, :], lout.weight.shape[1], 0)
    compat.apply_plan(model, plans, remove=remove)
    if remove:
        for pair in st.ffn:  # keep Linear's bookkeeping in step with the sliced weights
            for name in (pair.ffn_in, pair.ffn_out):
                w = layers[name].weight
                layers[name]._in_features, layers[name]._out_features = w.shape
    else:
        record_masks(model, masks)
    return 1.0 - float(np.concatenate(kept).mean()) if kept else 0.0


def head_value_matrix(q, k, v, o, num_heads: int) -> np.ndarray:
    """One row per head holding all its weights (Q/K/V rows, O columns of the neutral [out, in] layout),
    so a filter scorer's row norm is the head norm of the spec."""
    d = q.shape[0] // num_heads
    return np.stack([np.concatenate([q[h * d:(h + 1) * d].ravel(), k[h * d:(h + 1) * d].ravel(),
                                     v[h * d:(h + 1) * d].ravel(), o[:, h * d:(h + 1) * d].ravel()])
                     for h in range(num_heads)])


def _head(model: Any, spec: PruningSpec, ratio: float, remove: bool) -> float:
    """Attention heads: PaddleSlim's L1/L2 filter score per head, then PruningPlan slices (or zeroes)
    the head's Q/K/V columns + biases and O rows; `num_heads` shrinks when heads are removed."""
    from .models import encoder_blocks

    st = structure(model)
    layers = compressible(model)
    chosen = selected_linears(model, spec)
    blocks = encoder_blocks(model)
    atts = [a for a in st.attention if any(n in chosen for n in (a.query, a.key, a.value, a.output))]
    values = [head_value_matrix(*(layers[n].weight.numpy().T for n in (a.query, a.key, a.value, a.output)),
                                a.num_heads) for a in atts]
    kept = keep_vectors(spec, ratio, values)
    plans, masks, new_heads = {}, {}, {}
    for att, keep_h in zip(atts, kept):
        q, k, v, o = (layers[n] for n in (att.query, att.key, att.value, att.output))
        keep = np.repeat(keep_h, att.head_dim)
        for lin in (q, k, v):
            plans[lin.weight], plans[lin.bias] = (1, keep), (0, keep)
            masks[lin_name(layers, lin)] = np.repeat(keep[:, None], lin.weight.shape[0], 1)
        plans[o.weight] = (0, keep)
        masks[att.output] = np.repeat(keep[None, :], o.weight.shape[1], 0)
        new_heads[att.block] = int(keep_h.sum())
    compat.apply_plan(model, plans, remove=remove)
    if remove:
        for block, heads in new_heads.items():
            getattr(blocks[block].attention, "self").num_heads = heads
    else:
        record_masks(model, masks)
    return 1.0 - float(np.concatenate(kept).mean()) if kept else 0.0


def lin_name(layers: dict[str, Any], lin: Any) -> str:
    return next(n for n, l in layers.items() if l is lin)


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
            if step < sched.begin_step or step > sched.end_step or (step - sched.begin_step) % sched.frequency:
                return
            ratio = polynomial_sparsity(step, spec.target_sparsity, sched.initial_sparsity,
                                        sched.begin_step, sched.end_step, sched.power)
            ctx.log("sparsity", step, unit(model, spec, ratio, False))

        train(model, data, spec.training, ctx, on_step=on_step)
    achieved = unit(model, spec, spec.target_sparsity, spec.remove_pruned)
    ctx.log("sparsity", spec.training.steps if sched.kind is ScheduleKind.polynomial else 0, achieved)
    return model
