"""LowRankSpec -> each planned Dense (`ctx.plan.selected`) becomes Dense(in -> r, no bias) then Dense(r -> out)
from its truncated SVD (tf.linalg.svd), rebuilt by the graph replay (a `FactorizedDense` layer).

TFMOT has no factorisation: this is emulated with TF ops. MultiHeadAttention projections are left whole
(their heads would no longer be one kernel each).
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
from .layers import named_layers  # noqa: E402
from .models import FactorizedDense, custom_objects  # noqa: E402


def rank_for(singular_values: tf.Tensor, spec: LowRankSpec) -> int:
    """The spec's rank, or the smallest rank holding `energy` of sum(s^2)."""
    if spec.rank is not None:
        return min(int(spec.rank), int(singular_values.shape[0]))
    s2 = tf.cast(singular_values, tf.float64) ** 2
    cum = tf.cumsum(s2) / tf.reduce_sum(s2)
    return int(min(int(tf.reduce_sum(tf.cast(cum < spec.energy - 1e-12, tf.int32))) + 1, s2.shape[0]))


def factors(kernel: tf.Tensor, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Keras kernels (first [in, r], second [r, out]) with first @ second ~= kernel [in, out];
    singular values split evenly (sqrt on each side), as the reference does."""
    s, u, v = tf.linalg.svd(tf.cast(kernel, tf.float64), full_matrices=False)  # kernel = u diag(s) v^T
    root = tf.sqrt(s[:rank])
    first = u[:, :rank] * root
    second = tf.transpose(v[:, :rank] * root)
    return first.numpy().astype(np.float32), second.numpy().astype(np.float32)


def apply_low_rank(model: Any, spec: LowRankSpec, data: Optional[TaskData], ctx: StageContext) -> Any:
    """Factorise the planned Dense layers where it saves parameters (or always with `force`)."""
    if not is_graph_model(model):
        raise TypeError("low-rank rebuilds functional or Sequential tf_keras models")
    layers = named_layers(model)
    top = {unwrap(layer).name for layer in model.layers}
    plan: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
    for name in ctx.plan.selected:
        layer = layers[name]
        if not isinstance(layer, keras.layers.Dense) or name not in top:
            continue
        kernel = layer.kernel
        n_in, n_out = kernel.shape
        s = tf.linalg.svd(tf.cast(kernel, tf.float64), compute_uv=False)
        rank = rank_for(s, spec)
        if not spec.force and rank * (n_in + n_out) >= n_in * n_out:
            continue
        plan[name] = (rank, *factors(kernel, rank))
    if not plan:
        return model

    def clone(layer):
        if layer.name in plan:
            return FactorizedDense(layer.units, plan[layer.name][0],
                                   activation=keras.activations.serialize(layer.activation), name=layer.name)
        return clone_layer(layer)

    with keras.utils.custom_object_scope(custom_objects()):
        new = replay(model, clone)
    old = {unwrap(layer).name: unwrap(layer) for layer in model.layers}
    for layer in new.layers:
        if layer.name in plan:
            _, first, second = plan[layer.name]
            layer.first.set_weights([first])
            layer.second.set_weights([second, old[layer.name].bias.numpy()])
        else:
            layer.set_weights(old[layer.name].get_weights())
    for name, (rank, _, _) in plan.items():
        ctx.log(f"rank/{name}", 0, rank)
    return new
