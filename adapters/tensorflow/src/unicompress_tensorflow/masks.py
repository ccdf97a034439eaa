"""Emulated pruning masks (TF ops) on neutral [out, in] weights, for what TFMOT cannot mask itself.

TFMOT's `prune_low_magnitude` masks rank-2 Dense kernels in every granularity and MultiHeadAttention's
EinsumDense kernels ([in, heads, d], [heads, d, out]) only unstructured: its N:M rearrangement and its block
pooling accept rank-2 (or rank-4 conv) weights only. These masks cover the rest: N:M and blocks on
EinsumDense kernels, blocks scored by the L2 norm (TFMOT pools only AVG or MAX), and the factors of
low-rank layers (`<name>.0` / `<name>.1`, which no TFMOT wrapper reaches). Each is computed on the neutral
layout, so its groups and blocks mean what they mean for a Dense: N:M groups along the input, blocks of
(rows, cols) of the [out, in] matrix. Ties go to the lower position (a stable sort).
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

from typing import Any, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from unicompress.specs import Granularity, Norm, PruningSpec  # noqa: E402

from . import layers as L  # noqa: E402


def lowest(scores: tf.Tensor, fraction: float) -> np.ndarray:
    """Boolean keep-vector that removes the round(fraction * n) lowest scores (stable order)."""
    flat = tf.reshape(scores, [-1])
    n = int(flat.shape[0])
    k = int(round(fraction * n))
    keep = np.ones(n, bool)
    if k:
        keep[tf.argsort(flat, stable=True)[:k].numpy()] = False
    return keep.reshape(scores.shape)


def norm(x: tf.Tensor, which: Norm, axis) -> tf.Tensor:
    """L1 or L2 norm over `axis` (float64)."""
    x = tf.cast(x, tf.float64)
    return tf.reduce_sum(tf.abs(x), axis) if which is Norm.l1 else tf.sqrt(tf.reduce_sum(x * x, axis))


def magnitude_keep(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Unstructured: zero the round(sparsity * size) smallest |w|."""
    return lowest(tf.abs(tf.constant(w, tf.float64)), sparsity)


def nm_keep(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """N:M: in each group of m consecutive inputs of a row, zero the n smallest |w|."""
    groups = tf.reshape(tf.abs(tf.constant(w, tf.float64)), [-1, m])
    order = tf.argsort(groups, axis=1, stable=True)[:, :n]
    rows = tf.repeat(tf.range(tf.shape(groups)[0]), n)
    drop = tf.scatter_nd(tf.stack([rows, tf.reshape(order, [-1])], 1), tf.ones([tf.size(order)], tf.bool),
                         tf.shape(groups))
    return np.logical_not(drop.numpy()).reshape(w.shape)


def block_keep(w: np.ndarray, block: Sequence[int], sparsity: float, which: Norm) -> np.ndarray:
    """Blocks of (rows, cols) tiling the [out, in] matrix (edge blocks smaller), the lowest-norm ones zeroed."""
    br, bc = block
    rows, cols = w.shape
    padded = tf.pad(tf.constant(w, tf.float64), [[0, -rows % br], [0, -cols % bc]])
    blocks = tf.reshape(padded, [padded.shape[0] // br, br, padded.shape[1] // bc, bc])
    keep = lowest(norm(blocks, which, (1, 3)), sparsity)
    return np.repeat(np.repeat(keep, br, axis=0), bc, axis=1)[:rows, :cols]


def keep_mask(w: np.ndarray, spec: PruningSpec, sparsity: float) -> np.ndarray:
    """The keep-mask of one neutral weight for the spec's granularity at `sparsity`."""
    if spec.granularity is Granularity.n_m:
        return nm_keep(w, spec.n, spec.m)
    if spec.granularity is Granularity.block:
        return block_keep(w, spec.block_shape, sparsity, spec.norm)
    return magnitude_keep(w, sparsity)


class EmulatedPruner:
    """Masks of the named layers (neutral names), recomputed on demand and re-applied after optimizer steps.

    Example: ``p = EmulatedPruner(model, ["blk.mha.query"], spec); p.prune(0.5)`` zeroes half the kernel.
    """

    def __init__(self, model: Any, names: Sequence[str], spec: PruningSpec):
        self.model, self.names, self.spec = model, list(names), spec
        self.leaves = L.named_layers(model)
        self.masks: dict[str, tf.Tensor] = {}

    def prune(self, sparsity: float) -> None:
        """Compute each layer's mask from its current weights and zero the pruned weights."""
        if not self.names:
            return
        weights = L.get_weights(self.model, self.names)
        for name, w in weights.items():
            keep = keep_mask(w, self.spec, sparsity)
            var = L.kernel_var(self.leaves[name])
            self.masks[name] = tf.constant(L.kernel_from_neutral(self.leaves[name], keep.astype(np.float32),
                                                                 var.numpy()), var.dtype)
        self.reapply()

    def reapply(self) -> None:
        """Multiply the kernels by their masks again (after a training step moved the zeros)."""
        for name, mask in self.masks.items():
            var = L.kernel_var(self.leaves[name])
            var.assign(var * mask)

    def zeros_and_size(self) -> tuple[int, int]:
        zeros = size = 0
        for name in self.names:
            kernel = L.kernel_var(self.leaves[name]).numpy()
            zeros += int((kernel == 0).sum())
            size += kernel.size
        return zeros, size
