"""torch.nn.utils.prune methods for the patterns torch has no method for (N:M, blocks), and their tile maths.

Both subclass `prune.BasePruningMethod`, torch's extension point, so they compose with torch's own methods
(a `PruningContainer` when applied twice) and are made permanent by `prune.remove`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import prune


class NMPruning(prune.BasePruningMethod):
    """N:M sparsity: in every M consecutive weights along the last (input) dim, zero the N smallest |w|.

    Example: ``NMPruning.apply(linear, "weight", n=2, m=4)``.
    """

    PRUNING_TYPE = "unstructured"

    def __init__(self, n: int, m: int):
        if not 0 < n < m:
            raise ValueError(f"N:M needs 0 < n < m, got n={n}, m={m}")
        self.n, self.m = n, m

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        """The N:M mask of `t` (1 = kept) times `default_mask`."""
        # the planner refuses such layers before a stage; this guards direct use of the method, where a
        # reshape would otherwise make groups that straddle rows
        if t.shape[-1] % self.m:
            raise ValueError(f"input size {t.shape[-1]} is not a multiple of m={self.m}")
        groups = t.detach().abs().reshape(-1, self.m)
        lowest = torch.argsort(groups, dim=1, stable=True)[:, :self.n]
        mask = torch.ones_like(groups)
        mask.scatter_(1, lowest, 0.0)
        return default_mask * mask.reshape(t.shape)

    @classmethod
    def apply(cls, module: nn.Module, name: str, n: int, m: int, importance_scores=None):  # noqa: D102
        return super().apply(module, name, n=n, m=m, importance_scores=importance_scores)


class BlockPruning(prune.BasePruningMethod):
    """Zero the round(amount * n_blocks) tiles of lowest L1/L2 norm (edge tiles may be smaller)."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, block_shape: Sequence[int], amount: float, norm: str = "l2"):
        self.block_shape, self.amount, self.norm = tuple(block_shape), float(amount), norm

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        """The block mask of `t` (1 = kept) times `default_mask`."""
        scores = block_scores(t.detach(), self.block_shape, self.norm)
        keep = lowest_removed(scores.reshape(-1), self.amount).reshape(scores.shape)
        return default_mask * expand_blocks(keep, self.block_shape, t.shape).to(default_mask.dtype)

    @classmethod
    def apply(cls, module: nn.Module, name: str, block_shape, amount: float, norm: str = "l2",
              importance_scores=None):  # noqa: D102
        return super().apply(module, name, block_shape=block_shape, amount=amount, norm=norm,
                             importance_scores=importance_scores)


def lowest_removed(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Keep-vector (bool) over 1-D `scores` without the round(amount * n) lowest (stable order)."""
    k = int(round(amount * scores.numel()))
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(scores.double(), stable=True)[:k]] = False
    return keep


def group_norm(x: torch.Tensor, norm: str, dim) -> torch.Tensor:
    """L1 (``norm == "l1"``) or L2 norm of `x` over `dim`, in float64."""
    x = x.double()
    return x.abs().sum(dim=dim) if norm == "l1" else torch.sqrt((x * x).sum(dim=dim))


def block_scores(w: torch.Tensor, block_shape: Sequence[int], norm: str) -> torch.Tensor:
    """Norm of each tile of a 2-D tensor (zero-padded at the edges): [n_row_blocks, n_col_blocks]."""
    br, bc = block_shape
    rows, cols = w.shape
    nr, nc = -(-rows // br), -(-cols // bc)
    padded = torch.zeros(nr * br, nc * bc, dtype=torch.float64)
    padded[:rows, :cols] = w.double()
    return group_norm(padded.reshape(nr, br, nc, bc), norm, dim=(1, 3))


def expand_blocks(keep: torch.Tensor, block_shape: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """A per-tile tensor repeated over each tile's weights, cut to the weight's `shape`."""
    br, bc = block_shape
    full = keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)
    return full[:shape[0], :shape[1]]
