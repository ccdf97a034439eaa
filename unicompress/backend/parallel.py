"""How a data-parallel worker takes its part of a global batch: one rule for every backend's engine.

Worker `rank` of `world` keeps rows ``rank::world`` of every global batch and weights its loss by its share of the
rows, ``n_local / n_global``; summed over workers, the gradient is then that of the full-batch mean loss, so the
result equals one process training on the whole batch. (An engine whose all-reduce averages, as torch DDP and
paddle.DataParallel do, multiplies that share by `world`.)
"""
from __future__ import annotations

from typing import Any, Mapping, Union

import numpy as np


def shard_rows(inputs: Union[Mapping[str, Any], Any], labels: Any, rank: int, world: int
               ) -> tuple[Any, Any, float]:
    """This worker's rows of a global batch (numpy arrays or framework tensors: anything sliceable by rows) and its
    share ``n_local / n_global`` of the rows. Refuses a batch with fewer rows than workers (a worker would get none).

    Example: ``x, y, share = shard_rows({"input_ids": ids}, labels, rank=1, world=2)`` keeps rows 1, 3, 5, ...
    """
    n = int(np.shape(labels)[0]) if not hasattr(labels, "shape") else int(labels.shape[0])
    if n < world:
        raise ValueError(f"a training batch has {n} example(s), fewer than the {world} data-parallel workers: use "
                         "training.batch_size >= the number of workers")
    rows = slice(rank, None, world)
    local = {k: _rows(v, rows) for k, v in inputs.items()} if isinstance(inputs, Mapping) else _rows(inputs, rows)
    mine = _rows(labels, rows)
    return local, mine, int(mine.shape[0]) / n


def _rows(value: Any, rows: slice) -> Any:
    return value[rows] if hasattr(value, "shape") else np.asarray(value)[rows]


__all__ = ["shard_rows"]
