"""LowRankSpec -> each planned Dense (`ctx.plan.selected`, at `ctx.plan.ranks[name]`) becomes Dense(in -> r, no bias)
then Dense(r -> out) from its truncated SVD (tf.linalg.svd), rebuilt by the graph replay (a `FactorizedDense` layer).

The core decides which layers and ranks (only where it saves parameters, unless `force`). TFMOT has no
factorisation: this is emulated with TF ops. Only top-level Dense layers of a functional/Sequential model can be
replaced by the replay: the adapter gives MultiHeadAttention's EinsumDense projections and Dense layers nested in
another model other layer kinds (`TensorFlowAdapter.weight_kinds_for`), so the planner refuses them up front or,
with `selector.allow_partial`, lists them in the report as left whole.
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

from typing import Any, Optional  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from unicompress.backend.adapter import StageContext  # noqa: E402
from unicompress.backend.types import TaskData  # noqa: E402
from unicompress.specs import LowRankSpec  # noqa: E402

from .graph import clone_layer, is_graph_model, replay, unwrap  # noqa: E402
from .models import FactorizedDense, custom_objects  # noqa: E402


def factors(kernel: tf.Tensor, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Keras kernels (first [in, r], second [r, out]) with first @ second ~= kernel [in, out];
    singular values split evenly (sqrt on each side), as the reference does."""
    s, u, v = tf.linalg.svd(tf.cast(kernel, tf.float64), full_matrices=False)  # kernel = u diag(s) v^T
    root = tf.sqrt(s[:rank])
    first = u[:, :rank] * root
    second = tf.transpose(v[:, :rank] * root)
    return first.numpy().astype(np.float32), second.numpy().astype(np.float32)


def apply_low_rank(model: Any, spec: LowRankSpec, data: Optional[TaskData], ctx: StageContext) -> Any:
    """Factorise the planned Dense layers at their planned ranks (logged as ``rank/<name>``)."""
    plan = ctx.plan
    if not plan.selected:
        return model
    if not is_graph_model(model):
        raise TypeError("low-rank rebuilds functional or Sequential tf_keras models")
    top = {unwrap(layer).name: unwrap(layer) for layer in model.layers}
    lost = [n for n in plan.selected if not isinstance(top.get(n), keras.layers.Dense)]
    if lost:  # the planner only plans kind "linear" (top-level Dense): anything else is a planning bug
        raise ValueError(f"low rank can replace only top-level Dense layers, but the plan names {', '.join(lost)}")
    made = {name: (plan.ranks[name], *factors(top[name].kernel, plan.ranks[name])) for name in plan.selected}

    def clone(layer):
        if layer.name in made:
            return FactorizedDense(layer.units, made[layer.name][0],
                                   activation=keras.activations.serialize(layer.activation), name=layer.name)
        return clone_layer(layer)

    with keras.utils.custom_object_scope(custom_objects()):
        new = replay(model, clone)
    for layer in new.layers:
        if layer.name in made:
            _, first, second = made[layer.name]
            old = top[layer.name]
            bias = old.bias.numpy() if old.bias is not None else np.zeros(old.units, np.float32)
            layer.first.set_weights([first])
            layer.second.set_weights([second, bias])
        else:
            layer.set_weights(top[layer.name].get_weights())
    for name, (rank, _, _) in made.items():
        ctx.log(f"rank/{name}", 0, rank)
    return new
