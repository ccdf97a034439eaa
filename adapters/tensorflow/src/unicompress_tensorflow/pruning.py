"""PruningSpec -> tfmot.sparsity.keras (prune_low_magnitude, schedules, sparsity_m_by_n, block_size).

Native (TFMOT): unstructured magnitude, N:M (`sparsity_m_by_n`), blocks scored by the L1 norm
(`block_size` with AVG pooling of |w|), one-shot and polynomial schedules, `strip_pruning`.
Emulated (TF ops + `clone_model`): neuron and head pruning with the physical rebuild, and blocks scored
by the L2 norm (TFMOT pools only AVG or MAX of |w|).

TFMOT pitfalls handled here:
- a schedule updates the masks only on steps where (step - begin_step) % frequency == 0; the default
  frequency=100 prunes nothing in a short run. We always pass the spec's frequency (default 1) and
  verify the achieved sparsity.
- N:M masks are computed only at pruning step 1 (whatever the schedule).
- Dense kernels are [in, out]: TFMOT transposes for N:M (groups run along the input dim, as ours), and
  `block_size` is in kernel layout, so a neutral (rows, cols) block is TFMOT's (cols, rows).
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

from typing import Any, Optional  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude  # noqa: E402
from unicompress.backend.adapter import StageContext  # noqa: E402
from unicompress.backend.types import TaskData  # noqa: E402
from unicompress.errors import UnicompressError  # noqa: E402
from unicompress.specs import Criterion, Granularity, Norm, PruningSpec, ScheduleKind, Scope  # noqa: E402

from .layers import is_graph_model, layer_infos, named_layers, structure, unwrap  # noqa: E402
from .models import ScaledDotProductAttention, custom_objects  # noqa: E402
from .training import train  # noqa: E402

sparsity = tfmot.sparsity.keras


class PruningNotSupportedError(UnicompressError, ValueError):
    """A pruning setting this backend cannot honour on this model."""


def selected_dense(model: Any, spec: PruningSpec) -> list[str]:
    """Names of the Dense layers the spec's selector picks."""
    dense = {n for n, layer in named_layers(model).items() if isinstance(layer, keras.layers.Dense)}
    return [i.name for i in spec.selector.select(layer_infos(model)) if i.name in dense]


def schedule_for(spec: PruningSpec) -> sparsity.PruningSchedule:
    """The TFMOT schedule of the spec (always with the spec's frequency; TFMOT's default is 100)."""
    s = spec.schedule
    if s.kind is ScheduleKind.one_shot:
        return sparsity.ConstantSparsity(spec.target_sparsity, begin_step=0, frequency=1)
    return sparsity.PolynomialDecay(initial_sparsity=s.initial_sparsity, final_sparsity=spec.target_sparsity,
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


def wrap(model: keras.Model, names: list[str], params: dict) -> keras.Model:
    """Clone the model with prune_low_magnitude around the named layers (TFMOT's documented way)."""
    chosen = set(names)

    def clone(layer):
        return sparsity.prune_low_magnitude(layer, **params) if layer.name in chosen else layer

    with keras.utils.custom_object_scope(custom_objects()):
        return keras.models.clone_model(model, clone_function=clone)


def wrappers(model: keras.Model) -> list[Any]:
    return [layer for layer in model.layers if isinstance(layer, PruneLowMagnitude)]


def mask_sparsity(model: keras.Model) -> float:
    """Fraction of zeros over all masks of the pruning wrappers."""
    zeros = total = 0
    for w in wrappers(model):
        for _, mask, _ in w.pruning_vars:
            m = mask.numpy()
            zeros += int((m == 0).sum())
            total += m.size
    return zeros / total if total else 0.0


def update_masks_now(model: keras.Model, step: int) -> None:
    """One-shot: set every wrapper's step and run its own conditional mask update, then mask the weights."""
    for w in wrappers(model):
        w.pruning_step.assign(step)
        w.pruning_obj.conditional_mask_update()
        w.pruning_obj.weight_mask_op()


def apply_pruning(model: Any, spec: PruningSpec, data: Optional[TaskData], ctx: StageContext) -> Any:
    """Prune the selected Dense layers as the spec says; returns the (new) pruned model."""
    if spec.scope is Scope.global_:
        raise PruningNotSupportedError("scope 'global': TFMOT prunes each layer to its own target; use per_layer")
    if spec.criterion is not Criterion.magnitude:
        raise PruningNotSupportedError(f"criterion {spec.criterion.value!r}: TFMOT prunes by magnitude only")
    if not is_graph_model(model):
        raise PruningNotSupportedError("TFMOT prunes functional or Sequential tf_keras models; a subclassed model "
                                       "must call prune_low_magnitude on its layers itself")
    if spec.granularity in (Granularity.neuron, Granularity.head):
        return structured_prune(model, spec, data, ctx)
    names = selected_dense(model, spec)
    if not names:
        raise PruningNotSupportedError("the selector matches no Dense layer")
    if spec.granularity is Granularity.block and spec.norm is Norm.l2:
        return _block_l2(model, spec, names, data, ctx)
    pruned = wrap(model, names, prune_params(spec))
    if spec.schedule.kind is ScheduleKind.one_shot and not spec.trains:
        update_masks_now(pruned, 1 if spec.granularity is Granularity.n_m else 0)
        ctx.log("sparsity", 0, mask_sparsity(pruned))
    else:
        _train_pruned(pruned, spec, data, ctx)
    return sparsity.strip_pruning(pruned)


def _train_pruned(pruned: keras.Model, spec: PruningSpec, data: Optional[TaskData], ctx: StageContext) -> None:
    """Gradual pruning inside training: the wrappers update masks in call(training=True) on schedule steps."""
    for w in wrappers(pruned):
        w.pruning_step.assign(0)  # what UpdatePruningStep.on_train_begin does
    schedule = schedule_for(spec)
    nm = spec.granularity is Granularity.n_m

    def after(step: int) -> None:
        # the forward of this step incremented pruning_step to `step` and updated the masks if due
        due = (step == 1) if nm else bool(schedule(tf.constant(step, tf.int64))[0])
        if due:
            ctx.log("sparsity", step, mask_sparsity(pruned))

    train(pruned, data, spec.training, ctx, after_step=after, description="prune")
    for w in wrappers(pruned):  # the last update left unmasked weights (UpdatePruningStep.on_epoch_end)
        w.pruning_obj.weight_mask_op()


# ---- emulated: L2 blocks, neurons, heads ------------------------------------------------------------

def _lowest(scores: tf.Tensor, fraction: float) -> tf.Tensor:
    """Boolean keep-vector removing round(fraction * n) lowest scores (stable order, as the reference)."""
    n = int(scores.shape[0])
    k = int(round(fraction * n))
    order = tf.argsort(scores, stable=True)
    return tf.scatter_nd(tf.reshape(order[:k], [-1, 1]), tf.zeros([k], tf.bool), [n]) | \
        tf.scatter_nd(tf.reshape(order[k:], [-1, 1]), tf.ones([n - k], tf.bool), [n])


def _norm(x: tf.Tensor, norm: Norm, axis) -> tf.Tensor:
    x = tf.cast(x, tf.float64)
    return tf.reduce_sum(tf.abs(x), axis) if norm is Norm.l1 else tf.sqrt(tf.reduce_sum(x * x, axis))


def _block_l2(model, spec, names, data, ctx):
    if spec.trains:
        raise PruningNotSupportedError("block pruning with the L2 norm is emulated one-shot only; use norm l1 "
                                       "(TFMOT's native block pooling) for a gradual schedule")
    rows, cols = spec.block_shape
    layers = named_layers(model)
    for name in names:
        kernel = layers[name].kernel  # [in, out] = neutral transposed: blocks are (cols, rows) here
        k = tf.cast(kernel, tf.float64)
        n_in, n_out = k.shape
        pad = [[0, -n_in % cols], [0, -n_out % rows]]
        k = tf.pad(k, pad)
        blocks = tf.reshape(k, [k.shape[0] // cols, cols, k.shape[1] // rows, rows])
        scores = _norm(blocks, Norm.l2, (1, 3))
        keep = tf.reshape(_lowest(tf.reshape(scores, [-1]), spec.sparsity), scores.shape)
        full = tf.repeat(tf.repeat(keep, cols, axis=0), rows, axis=1)[:n_in, :n_out]
        kernel.assign(kernel * tf.cast(full, kernel.dtype))
    ctx.log("sparsity", 0, _zero_fraction([layers[n].kernel for n in names]))
    return model


def _zero_fraction(variables) -> float:
    zeros = sum(int(tf.reduce_sum(tf.cast(tf.equal(v, 0), tf.int64))) for v in variables)
    return zeros / max(sum(int(tf.size(v)) for v in variables), 1)


def structured_prune(model: keras.Model, spec: PruningSpec, data: Optional[TaskData], ctx: StageContext
                     ) -> keras.Model:
    """Neuron (FFN) or head pruning by norm masks; with remove_pruned the layers are rebuilt smaller."""
    if spec.trains:
        raise PruningNotSupportedError(f"{spec.granularity.value} pruning is one-shot here")
    st = structure(model)
    if st is None:
        raise PruningNotSupportedError(f"{spec.granularity.value} pruning needs a Transformer structure")
    layers = named_layers(model)
    selected = set(selected_dense(model, spec))
    plan: dict[str, tuple[Optional[np.ndarray], Optional[np.ndarray]]] = {}  # name -> (out rows, in cols) kept
    heads: dict[str, int] = {}
    if spec.granularity is Granularity.head:
        for a in st.attention:
            if a.query not in selected:
                continue
            q, k, v = (layers[n].kernel for n in (a.query, a.key, a.value))  # [in, heads*d]
            o = layers[a.output].kernel  # [heads*d, out]
            d = a.head_dim
            slices = [tf.split(t, a.num_heads, axis=ax) for t, ax in ((q, 1), (k, 1), (v, 1), (o, 0))]
            scores = tf.stack([_head_score([s[h] for s in slices], spec.norm) for h in range(a.num_heads)])
            keep = _lowest(scores, spec.sparsity).numpy()
            if not keep.any():
                raise PruningNotSupportedError(f"sparsity {spec.sparsity} removes every head of block {a.block}")
            rows = np.repeat(keep, d).nonzero()[0]
            for n in (a.query, a.key, a.value):
                plan[n] = (rows, None)
            plan[a.output] = (None, rows)
            heads[a.query.rsplit(".", 1)[0]] = int(keep.sum())
    else:
        for f in st.ffn:
            if f.ffn_in not in selected:
                continue
            scores = _norm(layers[f.ffn_in].kernel, spec.norm, 0)  # neutral rows = kernel columns
            keep = _lowest(scores, spec.sparsity).numpy()
            if not keep.any():
                raise PruningNotSupportedError(f"sparsity {spec.sparsity} removes every neuron of {f.ffn_in}")
            idx = keep.nonzero()[0]
            plan[f.ffn_in] = (idx, None)
            plan[f.ffn_out] = (None, idx)
    if not plan:
        raise PruningNotSupportedError(f"the selector matches no {'attention' if heads else 'FFN'} layer")
    out = rebuild(model, plan, heads) if spec.remove_pruned else _zero_units(model, plan)
    ctx.log("sparsity", 0, spec.sparsity)
    return out


def _head_score(parts: list, norm: Norm) -> tf.Tensor:
    """Norm of all of one head's weights (its Q/K/V columns and O rows), as the reference scores heads."""
    if norm is Norm.l1:
        return tf.add_n([_norm(p, norm, None) for p in parts])
    return tf.sqrt(tf.add_n([_norm(p, norm, None) ** 2 for p in parts]))


def _zero_units(model: keras.Model, plan) -> keras.Model:
    """Masks only: zero the pruned rows (and their bias) or columns, keep the shapes."""
    layers = named_layers(model)
    for name, (rows, cols) in plan.items():
        layer = layers[name]
        kernel = layer.kernel.numpy()
        if rows is not None:
            keep = np.zeros(kernel.shape[1], bool)
            keep[rows] = True
            kernel[:, ~keep] = 0
            if layer.bias is not None:
                layer.bias.assign(np.where(keep, layer.bias.numpy(), 0))
        if cols is not None:
            keep = np.zeros(kernel.shape[0], bool)
            keep[cols] = True
            kernel[~keep, :] = 0
        layer.kernel.assign(kernel)
    return model


def rebuild(model: keras.Model, plan, heads: dict[str, int]) -> keras.Model:
    """Clone the model with narrower Dense layers / fewer heads and copy the kept weights over."""
    def clone(layer):
        cfg = layer.get_config()
        rows = plan.get(layer.name, (None, None))[0]
        if rows is not None:
            cfg["units"] = int(len(rows))
        if isinstance(layer, ScaledDotProductAttention) and layer.name in heads:
            cfg["num_heads"] = heads[layer.name]
        return layer.__class__.from_config(cfg)

    with keras.utils.custom_object_scope(custom_objects()):
        new = keras.models.clone_model(model, clone_function=clone)
    old_layers = {unwrap(layer).name: unwrap(layer) for layer in model.layers}
    for layer in new.layers:
        old = old_layers[layer.name]
        if layer.name not in plan:
            layer.set_weights(old.get_weights())
            continue
        rows, cols = plan[layer.name]
        kernel, bias = old.kernel.numpy(), old.bias.numpy()
        if rows is not None:
            kernel, bias = kernel[:, rows], bias[rows]
        if cols is not None:
            kernel = kernel[cols, :]
        layer.set_weights([kernel, bias])
    return new
