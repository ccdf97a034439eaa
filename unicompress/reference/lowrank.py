"""What low-rank factorisation means, in numpy: the truncated SVD and its optimal error."""
from __future__ import annotations

from typing import Optional

import numpy as np


def rank_for_energy(singular_values: np.ndarray, energy: float) -> int:
    """Smallest r whose top-r singular values hold at least `energy` of sum(s^2)."""
    s2 = np.asarray(singular_values, dtype=np.float64) ** 2
    if not s2.sum() > 0:  # an all-zero weight: any rank holds all of its (zero) energy
        return 1
    cum = np.cumsum(s2) / s2.sum()
    return int(min(np.searchsorted(cum, energy - 1e-12) + 1, len(s2)))


def rank_for(weight: np.ndarray, rank: Optional[int] = None, energy: Optional[float] = None) -> int:
    """The rank a LowRankSpec gives one [out, in] weight: `rank` clamped to min(shape), or the energy rule
    (`rank_for_energy`) on its singular values (float64). Exactly one of `rank` / `energy` is given.

    Example: ``rank_for(np.eye(8), rank=12)`` is 8.
    """
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank or energy")
    if rank is not None:
        return int(min(rank, min(weight.shape)))
    return rank_for_energy(np.linalg.svd(np.asarray(weight, np.float64), compute_uv=False), energy)


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


def no_saving_reason(shape: tuple[int, int], rank: int) -> str:
    """Why a layer of `shape` stays whole at `rank` (the words the plan's skipped list uses)."""
    out_f, in_f = shape
    return (f"rank {rank} of {out_f}x{in_f} saves no parameters ({rank * (in_f + out_f)} >= {in_f * out_f} "
            "weights); force: true factorises anyway")
