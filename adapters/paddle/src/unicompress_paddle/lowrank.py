"""LowRankSpec on Paddle: truncated SVD (paddle.linalg.svd) of each selected Linear, replaced by
Linear(in, r) -> Linear(r, out) with the singular values split evenly between the two factors."""
from __future__ import annotations

from typing import Any

import numpy as np

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


def choose_rank(s: np.ndarray, spec: LowRankSpec) -> int:
    if spec.rank is not None:
        return int(min(spec.rank, s.size))
    s2 = s.astype(np.float64) ** 2
    cum = np.cumsum(s2) / s2.sum()
    return int(min(np.searchsorted(cum, spec.energy - 1e-12) + 1, s.size))


def factorize(model: Any, spec: LowRankSpec, data: TaskData, ctx: StageContext) -> Any:
    """LowRankSpec handler: returns the model with the planned Linear layers factorised (and logs the ranks)."""
    layers = compressible(model)
    for name in ctx.plan.selected:
        layer = layers[name]
        w = layer.weight  # Paddle [in, out] = W^T
        n_in, n_out = w.shape
        u, s, vt = paddle.linalg.svd(w.astype("float64"), full_matrices=False)  # W^T = U S V^T
        r = choose_rank(s.numpy(), spec)
        if r * (n_in + n_out) >= n_in * n_out and not spec.force:
            continue
        root = paddle.sqrt(s[:r])
        new = LowRankLinear(n_in, r, n_out)
        # x W^T = x U S V^T = (x U sqrt(S)) (sqrt(S) V^T)
        new.first.weight.set_value((u[:, :r] * root).astype("float32"))
        new.second.weight.set_value((root.unsqueeze(1) * vt[:r]).astype("float32"))
        new.second.bias.set_value(layer.bias)
        parent_name, _, child = name.rpartition(".")
        parent = model if not parent_name else dict(model.named_sublayers())[parent_name]
        setattr(parent, child, new)
        ctx.log("rank", len(ctx.history.get("rank", [])), r)
    return model
