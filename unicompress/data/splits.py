"""Fixed, documented splits of in-memory datasets, and batching of numpy arrays.

Everything here is plain numpy so every backend sees the very same examples in the very same order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from ..backend.types import TaskData

#: train / validation / test fractions used by every dataset of unicompress.data
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class ArraySplit:
    """One split held in memory: named input arrays (first axis = example) and int64 labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # row of each example in the source

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, n: Optional[int]) -> "ArraySplit":
        """The first `n` examples (all when `n` is None). Splits are stored shuffled, so this is a random subset."""
        if n is None or n >= len(self):
            return self
        return ArraySplit({k: v[:n] for k, v in self.inputs.items()}, self.labels[:n], self.ids[:n])

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0
                ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Yield (inputs, labels) batches; the last one may be smaller.

        With `shuffle` the order is a permutation drawn from `seed`: the same on every call, so a
        run is reproducible and two backends given the same TaskData train on the same batches.

        Example: ``next(split.batches(32))[0]["input_ids"].shape == (32, 128)``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            yield {k: v[idx] for k, v in self.inputs.items()}, self.labels[idx]


def stratified_split(labels: np.ndarray, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
                     ) -> list[np.ndarray]:
    """Indices of each split, drawn per class so every split keeps the class proportions.

    For a class of n examples, split k >= 1 gets round(n * fractions[k]) of them (half up) and split 0
    (train) the rest. Each returned index array is shuffled with `seed`, so a prefix is a random subset.

    Example: ``train, val, test = stratified_split(y, (0.8, 0.1, 0.1), seed=0)``.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) < 2 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(labels):  # sorted: the result does not depend on example order
        idx = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        sizes = [int(np.floor(len(idx) * f + 0.5)) for f in fractions[1:]]
        for k, size in enumerate(sizes, start=1):
            parts[k].append(idx[start:start + size])
            start += size
        parts[0].append(idx[start:])
    return [rng.permutation(np.concatenate(p)).astype(np.int64) for p in parts]


def first_occurrences(keys: Sequence[Any]) -> np.ndarray:
    """Indices of the first occurrence of every distinct key, in order (drops exact duplicates)."""
    seen: set = set()
    keep = []
    for i, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def subset(inputs: dict[str, np.ndarray], labels: np.ndarray, idx: np.ndarray) -> ArraySplit:
    """The examples at `idx` as an ArraySplit."""
    return ArraySplit({k: v[idx] for k, v in inputs.items()}, labels[idx], idx)


def task_data_from_splits(splits: dict[str, ArraySplit], num_labels: int, *, batch_size: int = 16,
                          eval_batch_size: int = 64, calibration_batch_size: int = 32, seed: int = 0,
                          extra: Optional[dict[str, Any]] = None) -> TaskData:
    """Wrap train/validation/test splits as a TaskData.

    - ``train()`` yields shuffled (inputs, labels) batches of `batch_size` (same order every call);
    - ``calibration()`` yields inputs from the *training* split (a fixed shuffled order, never test data);
    - ``evaluation()`` yields the test split; the validation split is in ``extra["validation"]``.
    ``extra["splits"]`` holds the ArraySplits themselves for code that wants whole arrays.
    """
    train, validation, test = splits["train"], splits["validation"], splits["test"]

    def calibration() -> Iterator[dict[str, np.ndarray]]:
        return (x for x, _ in train.batches(calibration_batch_size, shuffle=True, seed=seed + 1))

    info = {"splits": splits, "validation": _bind(validation.batches, eval_batch_size),
            "sizes": {k: len(v) for k, v in splits.items()}, "batch_size": batch_size}
    info.update(extra or {})
    return TaskData(train=lambda: train.batches(batch_size, shuffle=True, seed=seed),
                    calibration=calibration, evaluation=_bind(test.batches, eval_batch_size),
                    num_labels=num_labels, task="classification", extra=info)


def _bind(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: fn(*args)
