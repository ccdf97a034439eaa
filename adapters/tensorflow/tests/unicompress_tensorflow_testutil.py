"""Shared helpers of the TensorFlow adapter tests (a plain module, not a conftest: names stay unique)."""
from __future__ import annotations

import numpy as np
from unicompress import zoo
from unicompress.backend import TaskData


def tiny_bert_task(batches: int = 3) -> TaskData:
    """tiny-bert inputs (seeds 0..batches-1) with labels derived from the tokens: training and calibration."""
    cfg = zoo.config_for("tiny-bert")

    def train():
        for i in range(batches):
            x = zoo.inputs_for("tiny-bert", cfg, seed=i)
            yield x, (x["input_ids"][:, 1] % 3).astype(np.int64)
    return TaskData(train=train, calibration=lambda: (x for x, _ in train()), num_labels=3)
