"""What each pruning spec means, in numpy. Masks are boolean arrays: True = kept.

Weights are in the neutral [out, in] layout. Ties are broken by position (a stable sort),
so the reference is deterministic; backends may break ties differently, which the
conformance suite allows for.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def _prune_lowest(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask over `scores` that removes the round(sparsity * n) lowest scores."""
    flat = scores.reshape(-1)
    k = int(round(sparsity * flat.size))
    keep = np.ones(flat.size, dtype=bool)
    if k > 0:
        keep[np.argsort(flat, kind="stable")[:k]] = False
    return keep.reshape(scores.shape)


def magnitude_mask(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """Unstructured magnitude pruning of one tensor: zero the round(sparsity * size) smallest |w|.

    Example: ``magnitude_mask(np.array([[1., -3.], [0.5, 2.]]), 0.5)`` keeps -3 and 2.
    """
    return _prune_lowest(np.abs(weight), sparsity)


def global_magnitude_masks(weights: Mapping[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    """One magnitude threshold across all tensors; the overall fraction zeroed is `sparsity`."""
    names = list(weights)
    flat = np.concatenate([np.abs(weights[n]).reshape(-1) for n in names])
    keep = _prune_lowest(flat, sparsity)
    out, start = {}, 0
    for n in names:
        size = weights[n].size
        out[n] = keep[start:start + size].reshape(weights[n].shape)
        start += size
    return out


def nm_mask(weight: np.ndarray, n: int, m: int) -> np.ndarray:
    """N:M sparsity: in every group of M consecutive weights along the input (last) axis, the N
    smallest |w| are zeroed. The input size must be a multiple of M.
    """
    if weight.shape[-1] % m:
        raise ValueError(f"input size {weight.shape[-1]} is not a multiple of m={m}")
    groups = np.abs(weight).reshape(-1, m)
    order = np.argsort(groups, axis=1, kind="stable")
    keep = np.ones_like(groups, dtype=bool)
    np.put_along_axis(keep, order[:, :n], False, axis=1)
    return keep.reshape(weight.shape)


def group_norm(x: np.ndarray, norm: str, axis) -> np.ndarray:
    """L1 or L2 norm of `x` over `axis`."""
    if norm == "l1":
        return np.abs(x).sum(axis=axis)
    if norm == "l2":
        return np.sqrt((x.astype(np.float64) ** 2).sum(axis=axis))
    raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")


def neuron_mask(weight: np.ndarray, sparsity: float, norm: str = "l2") -> np.ndarray:
    """Neuron (output-channel) pruning: keep-vector over the rows of a [out, in] weight, scored by
    the row norm. For an FFN pair the rows of `ffn_in` are the intermediate neurons.
    """
    return _prune_lowest(group_norm(weight, norm, axis=1), sparsity)


def head_scores(query: np.ndarray, key: np.ndarray, value: np.ndarray, output: np.ndarray,
                num_heads: int, norm: str = "l2") -> np.ndarray:
    """Importance of each head: the norm of all its weights (Q, K, V rows and O columns).

    With L2 this is sqrt of the sum of squares over the four slices; with L1 the sum of |w|.
    """
    d = query.shape[0] // num_heads
    scores = []
    for h in range(num_heads):
        rows = slice(h * d, (h + 1) * d)
        parts = [query[rows], key[rows], value[rows], output[:, rows]]
        if norm == "l1":
            scores.append(sum(np.abs(p).sum() for p in parts))
        else:
            scores.append(np.sqrt(sum((p.astype(np.float64) ** 2).sum() for p in parts)))
    return np.asarray(scores)


def head_mask(query: np.ndarray, key: np.ndarray, value: np.ndarray, output: np.ndarray,
              num_heads: int, sparsity: float, norm: str = "l2") -> np.ndarray:
    """Keep-vector over heads: removes round(sparsity * num_heads) heads of lowest norm."""
    return _prune_lowest(head_scores(query, key, value, output, num_heads, norm), sparsity)


def head_mask_to_rows(keep_heads: np.ndarray, head_dim: int) -> np.ndarray:
    """Expand a keep-vector over heads to one over Q/K/V output rows."""
    return np.repeat(keep_heads, head_dim)


def block_mask(weight: np.ndarray, block_shape: Sequence[int], sparsity: float, norm: str = "l2") -> np.ndarray:
    """Block pruning: tile the [out, in] weight into blocks (edge blocks may be smaller), score
    each by its norm, zero the round(sparsity * n_blocks) lowest blocks.
    """
    br, bc = block_shape
    rows, cols = weight.shape
    nr, nc = -(-rows // br), -(-cols // bc)
    padded = np.zeros((nr * br, nc * bc), dtype=np.float64)
    padded[:rows, :cols] = weight
    blocks = padded.reshape(nr, br, nc, bc)
    keep_blocks = _prune_lowest(group_norm(blocks, norm, axis=(1, 3)), sparsity)
    keep = np.repeat(np.repeat(keep_blocks, br, axis=0), bc, axis=1)
    return keep[:rows, :cols]


def polynomial_sparsity(step: int, final: float, initial: float = 0.0, begin: int = 0, end: int = 100,
                        power: float = 3.0) -> float:
    """Sparsity at `step` of a polynomial schedule (Zhu & Gupta 2017; TFMOT PolynomialDecay):
    s = final + (initial - final) * (1 - (step - begin) / (end - begin)) ** power, clamped to [begin, end].
    """
    progress = min(max((step - begin) / (end - begin), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** power


def mask_update_due(step: int, begin: int, end: int, frequency: int) -> bool:
    """Whether a polynomial schedule updates the masks at `step`: every `frequency` steps from `begin` up to `end`,
    and at `end` itself, so the final sparsity is reached at `end_step` whatever the frequency (TFMOT alone skips
    `end` when ``(end - begin) % frequency != 0``; the TensorFlow backend adds it).

    Example: ``[s for s in range(12) if mask_update_due(s, 0, 10, 4)] == [0, 4, 8, 10]``.
    """
    return begin <= step <= end and ((step - begin) % frequency == 0 or step == end)


def sparsity_of(x: np.ndarray) -> float:
    """Fraction of exact zeros."""
    return float((x == 0).sum() / x.size) if x.size else 0.0


def mask_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of positions where two masks agree."""
    return float((np.asarray(a, bool) == np.asarray(b, bool)).mean())
