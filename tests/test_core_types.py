"""Neutral data helpers: TaskData re-batching to training.batch_size, layer-name lookup."""
import itertools

import numpy as np
import pytest

from unicompress.backend.types import TaskData, rebatch


def _source(sizes, width=3):
    """Batches of the given sizes whose rows are numbered 0, 1, 2, ... (labels = row number)."""
    start = 0
    out = []
    for n in sizes:
        rows = np.arange(start, start + n)
        out.append(({"input_ids": np.repeat(rows[:, None], width, axis=1), "attention_mask": np.ones((n, width))},
                    rows.copy()))
        start += n
    return out


def test_rebatch_yields_exact_sizes_in_row_order_across_passes():
    batches = _source([4, 4, 3])  # 11 rows per pass
    data = TaskData(train=lambda: iter(batches), num_labels=2)
    got = list(itertools.islice(data.endless_train(batch_size=5), 6))  # 30 rows: 2 passes and a bit
    assert [len(y) for _, y in got] == [5] * 6
    labels = np.concatenate([y for _, y in got])
    assert labels.tolist() == (list(range(11)) * 3)[:30]
    for x, y in got:  # inputs stay aligned with their labels
        assert (x["input_ids"][:, 0] == y).all()
        assert x["attention_mask"].shape == (5, 3)


def test_matching_batches_pass_through_without_copy():
    batches = _source([4, 4])
    got = list(itertools.islice(rebatch(iter(batches), 4), 2))
    assert got[0][0] is batches[0][0] and got[1][1] is batches[1][1]


def test_without_batch_size_the_loader_batches_pass_through():
    batches = _source([4, 3])
    data = TaskData(train=lambda: iter(batches), num_labels=2)
    assert [len(y) for _, y in itertools.islice(data.endless_train(), 4)] == [4, 3, 4, 3]


def test_plain_array_inputs_and_larger_source_batches_are_split():
    batches = [(np.arange(10, dtype=np.float32)[:, None], np.arange(10))]
    got = list(itertools.islice(rebatch(itertools.cycle(batches), 4), 5))  # 20 rows = 2 passes
    assert [y.tolist() for _, y in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]
    assert all(x.shape == (4, 1) for x, _ in got)


def test_unjoinable_batches_name_the_field_and_the_fix():
    batches = [({"input_ids": np.zeros((2, 8))}, np.zeros(2)), ({"input_ids": np.zeros((2, 5))}, np.zeros(2))]
    with pytest.raises(ValueError, match="training.batch_size.*pad every batch"):
        list(itertools.islice(rebatch(iter(batches), 3), 1))


def test_bad_batch_size_and_empty_data_are_refused():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(rebatch(iter(_source([2])), 0))
    with pytest.raises(ValueError, match="yielded no batches"):
        next(TaskData(train=lambda: iter(()), num_labels=2).endless_train(4))


def test_known_names_defaults_to_all_and_names_the_unknown_one():
    from unicompress.backend.types import known_names

    layers = {f"layer.{i}": i for i in range(10)}
    assert known_names(layers) == list(layers)
    assert known_names(layers, ["layer.3", "layer.1"]) == ["layer.3", "layer.1"]
    with pytest.raises(KeyError, match=r"no layer named 'layr.2'; known: layer.0, .*layer.7 \.\.\."):
        known_names(layers, ["layer.1", "layr.2"])
