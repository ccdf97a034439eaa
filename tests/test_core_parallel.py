"""The one data-parallel sharding rule (`unicompress.backend.parallel.shard_rows`)."""
from __future__ import annotations

import numpy as np
import pytest

from unicompress.backend.parallel import shard_rows


def test_workers_take_interleaved_rows_and_their_shares_sum_to_one():
    ids = np.arange(14).reshape(7, 2)
    labels = np.arange(7)
    parts = [shard_rows({"input_ids": ids}, labels, rank, 3) for rank in range(3)]
    assert [p[1].tolist() for p in parts] == [[0, 3, 6], [1, 4], [2, 5]]
    np.testing.assert_array_equal(parts[1][0]["input_ids"], ids[[1, 4]])
    assert sum(p[2] for p in parts) == pytest.approx(1.0) and parts[0][2] == pytest.approx(3 / 7)
    # the mean of per-worker mean losses weighted by the shares is the full-batch mean
    losses = labels.astype(float) ** 2
    assert sum(losses[p[1]].mean() * p[2] for p in parts) == pytest.approx(losses.mean())


def test_plain_array_inputs_and_too_small_batches():
    x, y, share = shard_rows(np.arange(4.0), [0, 1, 0, 1], 1, 2)
    assert x.tolist() == [1.0, 3.0] and y.tolist() == [1, 1] and share == 0.5
    with pytest.raises(ValueError, match="fewer than the 4 data-parallel workers"):
        shard_rows({"x": np.zeros((3, 2))}, np.zeros(3), 0, 4)
