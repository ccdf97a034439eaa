"""Refuse unusable data before any stage runs, the same way for every backend.

`compress()` reads the first batches of each TaskData source (the reproducibility record reads them too) and
refuses, naming the source, the batch and the array: a batch without rows (a training loop would spin), inputs
and labels of different lengths, NaN or inf in float inputs (calibration would compute NaN ranges, training a
NaN loss), and class labels that are floats (1.7 would be cut to 1 without a word) or outside
``[0, num_labels)``. Later batches meet the same checks where they are read (`TaskData.endless_train`,
`TaskData.calibration_batches`, `rebatch`), so a bad batch part-way stops its stage with that error.
"""
from __future__ import annotations

from typing import Any, Optional

from ..backend.types import TaskData, check_batch
from ..errors import InvalidDataError

#: batches of each source checked before the stages (as many as the reproducibility record reads)
CHECKED_BATCHES = 2


def check_task_data(data: Optional[TaskData], batches: int = CHECKED_BATCHES) -> None:
    """Check the first `batches` batches of every source of `data`; raise InvalidDataError on the first problem.

    Example: ``check_task_data(TaskData(train=lambda: iter([(x, y)])))`` passes for finite float `x` and
    int64 `y` of the same length.
    """
    if data is None:
        return
    for source in ("train", "calibration", "evaluation"):
        make = getattr(data, source)
        if make is None:
            continue
        iterator = iter(make())
        try:
            for index, batch in zip(range(batches), iterator):  # range first: never reads one batch too many
                _check(data, source, index, batch)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


def _check(data: TaskData, source: str, index: int, batch: Any) -> None:
    where = f"TaskData.{source} batch {index}"
    if source == "calibration":
        check_batch(batch[0] if isinstance(batch, tuple) else batch, None, where)
        return
    if not (isinstance(batch, tuple) and len(batch) == 2):
        raise InvalidDataError(f"{where} is a {type(batch).__name__}; {source} batches are (inputs, labels) pairs "
                               "of numpy arrays")
    check_batch(batch[0], batch[1], where, data.task, data.num_labels)


def non_finite_tensors(tensors: dict[str, Any]) -> list[str]:
    """``"name (k NaN, j inf of n)"`` for every float array of `tensors` holding NaN or inf, in order: the one
    wording `compress()` and the planner use when they refuse non-finite weights.

    Example: ``non_finite_tensors({"fc": np.array([1.0, np.inf])}) == ["fc (0 NaN, 1 inf of 2)"]``.
    """
    import numpy as np

    out = []
    for name, w in tensors.items():
        w = np.asarray(w)
        if w.dtype.kind in "fc" and not np.isfinite(w).all():
            out.append(f"{name} ({int(np.isnan(w).sum())} NaN, {int(np.isinf(w).sum())} inf of {w.size})")
    return out
