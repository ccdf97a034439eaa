"""Low-rank factorisation: a planned MatMul/Gemm becomes ``MatMul(x, A)`` then the original node on ``B``, from the
truncated SVD of W (numpy float64, sqrt(s) on each factor): layers ``<name>.0`` [r, in] and ``<name>.1`` [out, r],
both marked `layers.LOW_RANK_MARK` so they keep the replaced layer's role. The core plans which layers and at which
rank (`ctx.plan.selected`, `ctx.plan.ranks`; factors of an earlier stage are never planned).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import onnx

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import LowRankSpec

from . import layers as L


def apply_low_rank(model: Any, spec: LowRankSpec, data: Optional[TaskData], ctx: StageContext) -> Any:
    """LowRankSpec handler: factorise every planned layer at its planned rank (logged as ``rank/<name>``)."""
    layers = {la.name: la for la in L.canonicalize(model)}
    for name in ctx.plan.selected:
        layer = layers[name]
        if layer.scale is not None:
            raise ValueError(f"{name} is quantized: factorise the float model, then quantize")
        rank = ctx.plan.ranks[name]
        u, s, vt = np.linalg.svd(L.weight(model, layer).astype(np.float64), full_matrices=False)
        root = np.sqrt(s[:rank])
        _split(model, layer, root[:, None] * vt[:rank], u[:, :rank] * root[None, :])
        ctx.log(f"rank/{name}", 0, rank)
    return model


def _split(model: Any, layer: L.Layer, first: np.ndarray, second: np.ndarray) -> None:
    """Put MatMul(x, first^T) in front of the layer's node and give the node `second` as its weight."""
    dtype = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == layer.source)).dtype
    node = layer.node
    a, b = f"{layer.name}.0.weight", f"{layer.name}.1.weight"
    L.replace_initializer(model, a, first.T.astype(dtype))  # MatMul's B is [in, r]
    L.replace_initializer(model, b, (second.T if layer.transposed else second).astype(dtype))
    mid = f"{layer.name}.0_output"
    head = onnx.helper.make_node("MatMul", [node.input[0], a], [mid], name=f"{node.name}_lowrank_0",
                                 doc_string=L.LOW_RANK_MARK)
    node.input[0], node.input[1], node.doc_string = mid, b, L.LOW_RANK_MARK
    L.insert_before(model, node, head)
    L.drop_if_unused(model, layer.source)
