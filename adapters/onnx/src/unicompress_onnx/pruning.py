"""Magnitude pruning of the planned MatMul/Gemm initializers with numpy: unstructured (per layer or one global
threshold), N:M and blocks. Masks are computed on the neutral [out, in] weights and written back in place.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import PruningSpec
from unicompress.specs.pruning import Granularity, Scope

from . import layers as L


def keep_largest(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask zeroing the round(sparsity * n) smallest scores (ties by position: a stable sort)."""
    flat = scores.reshape(-1)
    keep = np.ones(flat.size, dtype=bool)
    k = int(round(sparsity * flat.size))
    if k:
        keep[np.argsort(flat, kind="stable")[:k]] = False
    return keep.reshape(scores.shape)


def keep_n_of_m(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep-mask zeroing the n smallest |w| of every m consecutive inputs of each row."""
    groups = np.abs(w).reshape(-1, m)
    keep = np.ones_like(groups, dtype=bool)
    np.put_along_axis(keep, np.argsort(groups, axis=1, kind="stable")[:, :n], False, axis=1)
    return keep.reshape(w.shape)


def keep_blocks(w: np.ndarray, shape: tuple[int, int], sparsity: float, norm: str) -> np.ndarray:
    """Keep-mask zeroing the lowest-norm (l1 or l2) blocks of `shape`; edge blocks may be smaller."""
    (br, bc), (rows, cols) = shape, w.shape
    padded = np.zeros((-(-rows // br) * br, -(-cols // bc) * bc))
    padded[:rows, :cols] = np.abs(w) if norm == "l1" else np.square(w, dtype=np.float64)
    scores = padded.reshape(padded.shape[0] // br, br, padded.shape[1] // bc, bc).sum(axis=(1, 3))
    keep = keep_largest(scores if norm == "l1" else np.sqrt(scores), sparsity)
    return np.repeat(np.repeat(keep, br, axis=0), bc, axis=1)[:rows, :cols]


def apply_pruning(model: Any, spec: PruningSpec, data: Optional[TaskData], ctx: StageContext) -> Any:
    """PruningSpec handler: zero the planned layers' smallest weights; logs the achieved sparsity."""
    names = list(ctx.plan.selected)
    w = L.weights(model, names)
    if spec.granularity is Granularity.n_m:
        masks = {n: keep_n_of_m(w[n], spec.n, spec.m) for n in names}
    elif spec.granularity is Granularity.block:
        masks = {n: keep_blocks(w[n], spec.block_shape, spec.target_sparsity, spec.norm.value) for n in names}
    elif spec.scope is Scope.global_:
        flat = keep_largest(np.concatenate([np.abs(w[n]).reshape(-1) for n in names]), spec.target_sparsity)
        cuts = np.cumsum([0] + [w[n].size for n in names])
        masks = {n: flat[cuts[i]:cuts[i + 1]].reshape(w[n].shape) for i, n in enumerate(names)}
    else:
        masks = {n: keep_largest(np.abs(w[n]), spec.target_sparsity) for n in names}
    L.set_weights(model, {n: np.where(masks[n], w[n], 0).astype(w[n].dtype) for n in names})
    total = sum(m.size for m in masks.values())
    ctx.log("sparsity", 0, 1.0 - sum(int(m.sum()) for m in masks.values()) / max(total, 1))
    return model
