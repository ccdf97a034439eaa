"""LowRankSpec on Paddle: each planned Linear (`ctx.plan.selected`, at `ctx.plan.ranks[name]`) is replaced by
Linear(in, r) -> Linear(r, out) from its truncated SVD (paddle.linalg.svd), the singular values split evenly
between the two factors. The core decides the layers and ranks (and refuses NaN/inf weights before any SVD)."""
from __future__ import annotations

from typing import Any

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import LowRankSpec

from .compat import paddle
from .layers import compressible


class LowRankLinear(paddle.nn.Layer):
    """y = second(first(x)): `first` [in -> r] without bias, `second` [r -> out] with the original bias."""

    def __init__(self, n_in: int, rank: int, n_out: int):
        super().__init__()
        self.first = paddle.nn.Linear(n_in, rank, bias_attr=False)
        self.second = paddle.nn.Linear(rank, n_out)
        self.rank = rank

    def forward(self, x):
        return self.second(self.first(x))


def factorize_linear(layer: Any, rank: int) -> LowRankLinear:
    """The two-Linear replacement of one paddle Linear (weight [in, out] = W^T) at `rank`."""
    w = layer.weight
    n_in, n_out = w.shape
    u, s, vt = paddle.linalg.svd(w.astype("float64"), full_matrices=False)  # W^T = U S V^T
    root = paddle.sqrt(s[:rank])
    new = LowRankLinear(n_in, rank, n_out)
    # x W^T = x U S V^T = (x U sqrt(S)) (sqrt(S) V^T)
    new.first.weight.set_value((u[:, :rank] * root).astype(w.dtype))
    new.second.weight.set_value((root.unsqueeze(1) * vt[:rank]).astype(w.dtype))
    if layer.bias is not None:
        new.second.bias.set_value(layer.bias)
    else:
        new.second.bias.set_value(paddle.zeros([n_out], dtype=w.dtype))
    return new


def factorize(model: Any, spec: LowRankSpec, data: TaskData, ctx: StageContext) -> Any:
    """LowRankSpec handler: returns the model with the planned Linear layers factorised (ranks logged as
    ``rank/<name>``)."""
    layers = compressible(model)
    sublayers = dict(model.named_sublayers())
    for name in ctx.plan.selected:
        rank = ctx.plan.ranks[name]
        parent_name, _, child = name.rpartition(".")
        setattr(model if not parent_name else sublayers[parent_name], child, factorize_linear(layers[name], rank))
        ctx.log(f"rank/{name}", 0, rank)
    return model
