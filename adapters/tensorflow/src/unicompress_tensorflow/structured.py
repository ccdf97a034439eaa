"""Head and neuron pruning (emulated: TFMOT has neither), carrying out `ctx.plan.attention` / `.ffn` / `.rows`.

Scores follow the reference: a head by the norm of all its weights (its Q/K/V rows and O columns), a neuron by
the norm of its `ffn_in` row (with its gate row in a gated FFN). `remove_pruned: false` zeroes the pruned units
(their rows and biases in Q/K/V or ffn_in/gate, their columns in O or ffn_out); `remove_pruned: true` rebuilds
the model with the graph replay: Dense layers get fewer units, the zoo's ScaledDotProductAttention and keras
MultiHeadAttention fewer heads (the kept heads' kernels and biases copied), every layer keeps its name. Lone
Linears (`plan.rows`) lose output rows to zeros (nothing known consumes them, so they keep their width).
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from unicompress.backend.adapter import StageContext  # noqa: E402
from unicompress.backend.plan import StagePlan  # noqa: E402
from unicompress.specs import Granularity, Norm, PruningSpec  # noqa: E402

from . import layers as L  # noqa: E402
from .graph import clone_layer, replay, unwrap  # noqa: E402
from .masks import lowest, norm  # noqa: E402
from .models import ScaledDotProductAttention  # noqa: E402

class _Edits:
    """What the removal changes: rows kept of layers that lose output units, columns kept of their consumers,
    heads kept of attention layers (by top-level layer name)."""

    def __init__(self) -> None:
        self.rows: dict[str, np.ndarray] = {}  # neutral name -> kept output rows
        self.cols: dict[str, np.ndarray] = {}  # neutral name -> kept input columns
        self.heads: dict[str, np.ndarray] = {}  # attention layer (SDPA or MHA) -> kept head indices


def structured_prune(model: Any, spec: PruningSpec, plan: StagePlan, ctx: StageContext) -> Any:
    """Neuron or head pruning of the planned units; with remove_pruned the model is rebuilt smaller."""
    from .pruning import PruningNotSupportedError

    if spec.trains:
        raise PruningNotSupportedError(f"{spec.granularity.value} pruning is one-shot here")
    edits = _Edits()
    names = [n for a in plan.attention for n in a.layers] + [n for f in plan.ffn for n in f.layers] + \
        list(plan.rows)
    weights = L.get_weights(model, names)
    leaves = L.named_layers(model)
    pruned = kept_total = 0
    if spec.granularity is Granularity.head:
        for a in plan.attention:
            width = a.num_heads * a.head_dim
            odd = [n for n in (a.query, a.key, a.value) if weights[n].shape[0] != width] + \
                ([a.output] if weights[a.output].shape[1] != width else [])
            if odd:
                raise PruningNotSupportedError(
                    f"attention block {a.block}: {', '.join(odd)} do not hold {a.num_heads} heads of {a.head_dim} "
                    f"(e.g. MultiHeadAttention with value_dim != key_dim): head pruning needs one head width")
            keep = lowest(_head_scores(weights, a, spec.norm), spec.sparsity)
            rows = np.repeat(keep, a.head_dim).nonzero()[0]
            for n in dict.fromkeys((a.query, a.key, a.value)):
                edits.rows[n] = rows
            edits.cols[a.output] = rows
            edits.heads[_attention_layer(model, a)] = keep.nonzero()[0]
            pruned, kept_total = pruned + int((~keep).sum()), kept_total + keep.size
    for f in plan.ffn:
        scores = norm(weights[f.ffn_in], spec.norm, 1)
        if f.gate:
            g = norm(weights[f.gate], spec.norm, 1)
            scores = scores + g if spec.norm is Norm.l1 else tf.sqrt(scores ** 2 + g ** 2)
        keep = lowest(scores, spec.sparsity)
        idx = keep.nonzero()[0]
        for n in (f.ffn_in, f.gate):
            if n:
                edits.rows[n] = idx
        edits.cols[f.ffn_out] = idx
        pruned, kept_total = pruned + int((~keep).sum()), kept_total + keep.size
    for n in plan.rows:  # lone Linears: rows zeroed whether or not the spec removes
        keep = lowest(norm(weights[n], spec.norm, 1), spec.sparsity)
        _zero(leaves[n], weights[n], keep.nonzero()[0], None)
    out = rebuild(model, edits) if spec.remove_pruned else _zero_units(model, edits, weights)
    ctx.log("sparsity", 0, pruned / kept_total if kept_total else spec.sparsity)
    return out


def _head_scores(weights: dict[str, np.ndarray], a: Any, which: Norm) -> tf.Tensor:
    """Norm of all of one head's weights (its Q/K/V rows and O columns), as the reference scores heads."""
    d, h = a.head_dim, a.num_heads
    parts = [tf.reshape(tf.constant(weights[n], tf.float64), [h, d, -1]) for n in (a.query, a.key, a.value)]
    out = tf.constant(weights[a.output], tf.float64)
    parts.append(tf.transpose(tf.reshape(out, [out.shape[0], h, d]), [1, 2, 0]))
    if which is Norm.l1:
        return tf.add_n([tf.reduce_sum(tf.abs(p), [1, 2]) for p in parts])
    return tf.sqrt(tf.add_n([tf.reduce_sum(p * p, [1, 2]) for p in parts]))


def _attention_layer(model: Any, a: Any) -> str:
    """The top-level layer that holds this block's head count (MHA, or the zoo's ScaledDotProductAttention)."""
    top = {unwrap(layer).name: unwrap(layer) for layer in model.layers}
    base = a.query.rpartition(".")[0]
    if isinstance(top.get(base), keras.layers.MultiHeadAttention):
        return base
    for layer in top.values():  # the SDPA that the block's Q Dense feeds
        if isinstance(layer, ScaledDotProductAttention):
            for node in layer._inbound_nodes:
                if any(unwrap(kt._keras_history.layer).name == a.query for kt in node.keras_inputs):
                    return layer.name
    return base


def _zero(leaf: Any, w: np.ndarray, rows, cols) -> None:
    """Zero the rows not in `rows` (and their bias) or the columns not in `cols` of one neutral weight."""
    w = w.copy()
    if rows is not None:
        drop = np.ones(w.shape[0], bool)
        drop[rows] = False
        w[drop] = 0.0
        bias = L.bias_of(leaf)
        if bias is not None:
            L.set_bias(leaf, np.where(drop, 0.0, bias))
    if cols is not None:
        drop = np.ones(w.shape[1], bool)
        drop[cols] = False
        w[:, drop] = 0.0
    var = L.kernel_var(leaf)
    var.assign(L.kernel_from_neutral(leaf, w, var.numpy()))


def _zero_units(model: Any, edits: _Edits, weights: dict[str, np.ndarray]) -> Any:
    """Masks only: the pruned units zeroed on both sides, shapes kept."""
    leaves = L.named_layers(model)
    for name in set(edits.rows) | set(edits.cols):
        w = L.get_weights(model, [name])[name]
        _zero(leaves[name], w, edits.rows.get(name), edits.cols.get(name))
    return model


# ---- the physical removal -----------------------------------------------------------------------------------

def rebuild(model: Any, edits: _Edits) -> Any:
    """The model replayed with narrower Dense layers and fewer heads; every kept weight copied over."""
    def make(layer):
        layer = unwrap(layer)
        cfg = layer.get_config()
        if layer.name in edits.heads:
            cfg["num_heads"] = int(len(edits.heads[layer.name]))
            return layer.__class__.from_config(cfg)
        if layer.name in edits.rows and isinstance(layer, keras.layers.Dense):
            cfg["units"] = int(len(edits.rows[layer.name]))
            return layer.__class__.from_config(cfg)
        return clone_layer(layer)

    new = replay(model, make)
    old = {unwrap(layer).name: unwrap(layer) for layer in model.layers}
    for layer in new.layers:
        src = old[layer.name]
        if isinstance(layer, keras.layers.MultiHeadAttention) and layer.name in edits.heads:
            _copy_heads(src, layer, edits.heads[layer.name])
        elif isinstance(layer, keras.layers.Dense) and (layer.name in edits.rows or layer.name in edits.cols):
            kernel, bias = src.kernel.numpy(), (src.bias.numpy() if src.bias is not None else None)
            if layer.name in edits.rows:
                kernel = kernel[:, edits.rows[layer.name]]
                bias = bias[edits.rows[layer.name]] if bias is not None else None
            if layer.name in edits.cols:
                kernel = kernel[edits.cols[layer.name], :]
            layer.set_weights([kernel] + ([bias] if bias is not None else []))
        else:
            layer.set_weights(src.get_weights())
    return new


def _copy_heads(src: Any, dst: Any, heads: np.ndarray) -> None:
    """Kernels [in, heads, d] and biases [heads, d] of the kept heads for Q/K/V; O's [heads, d, out] rows."""
    for part in ("_query_dense", "_key_dense", "_value_dense"):
        s, d = getattr(src, part), getattr(dst, part)
        values = [s.kernel.numpy()[:, heads]] + ([s.bias.numpy()[heads]] if s.bias is not None else [])
        d.set_weights(values)
    s, d = src._output_dense, dst._output_dense
    d.set_weights([s.kernel.numpy()[heads]] + ([s.bias.numpy()] if s.bias is not None else []))
