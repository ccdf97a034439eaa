"""What low-rank factorisation means, in numpy: the truncated SVD and its optimal error."""
from __future__ import annotations

import numpy as np


def rank_for_energy(singular_values: np.ndarray, energy: float) -> int:
    """Smallest r whose top-r singular values hold at least `energy` of sum(s^2)."""
    s2 = np.asarray(singular_values, dtype=np.float64) ** 2
    cum = np.cumsum(s2) / s2.sum()
    return int(min(np.searchsorted(cum, energy - 1e-12) + 1, len(s2)))


def truncated_svd(weight: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Factors (first [rank, in], second [out, rank]) with second @ first ~= weight ([out, in]).

    The singular values are split evenly (sqrt on each side), which keeps both factors well scaled.
    """
    u, s, vt = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    first = (root[:, None] * vt[:rank]).astype(weight.dtype)
    second = (u[:, :rank] * root[None, :]).astype(weight.dtype)
    return first, second


def optimal_error(weight: np.ndarray, rank: int) -> float:
    """The Frobenius error of the best rank-r approximation (Eckart-Young): sqrt(sum of tail s^2)."""
    s = np.linalg.svd(weight.astype(np.float64), compute_uv=False)
    return float(np.sqrt((s[rank:] ** 2).sum()))


def saves_parameters(shape: tuple[int, int], rank: int) -> bool:
    """Whether Linear(in, r) + Linear(r, out) has fewer weights than Linear(in, out)."""
    out_f, in_f = shape
    return rank * (in_f + out_f) < in_f * out_f
