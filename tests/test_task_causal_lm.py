"""The causal-lm task in the core: perplexity of known logits, run_clm block packing, the recipe's data section."""
import json
import math

import numpy as np
import pytest

from unicompress.backend.types import TaskData
from unicompress.data.checks import check_task_data
from unicompress.data.lm import build_lm_data, from_text, pack_blocks, split_documents
from unicompress.errors import SpecValidationError
from unicompress.metrics import IGNORE_INDEX, NLLTotal, causal_lm_metrics, perplexity, token_nll
from unicompress.recipe_io import load_recipe
from unicompress.tasks import task_problems

tokenizers = pytest.importorskip("tokenizers")

WORDS = ["in", "the", "beginning", "god", "created", "heaven", "and", "earth", "was", "without", "form", "void"]
VOCAB = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *WORDS])}  # [PAD] 0, [UNK] 1, "in" 2, ... "void" 13


def _word_tokenizer():
    """A real word-level tokenizer over VOCAB (no special tokens added to a text), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def _folder(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    _word_tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]", "unk_token": "[UNK]",
                                                              "model_max_length": 64}))
    return folder


def _ids(text):
    return [VOCAB[w] for w in text.split()]


# ---- perplexity --------------------------------------------------------------------------------------------------
def test_uniform_logits_give_the_vocabulary_size():
    logits = np.zeros((2, 7, 50), np.float32)
    labels = np.random.default_rng(0).integers(0, 50, size=(2, 7))
    total, count = token_nll(logits, labels)
    assert count == 2 * 6  # the first token of every row is predicted by nothing
    assert math.isclose(math.exp(total / count), 50.0, rel_tol=1e-12)
    assert math.isclose(perplexity(logits, labels), 50.0, rel_tol=1e-12)


def test_confident_correct_logits_give_one():
    labels = np.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    logits = np.full((1, 8, 10), -60.0, np.float32)
    logits[0, np.arange(7), labels[0, 1:]] = 60.0  # position t puts all mass on token t + 1
    assert math.isclose(perplexity(logits, labels), 1.0, rel_tol=0, abs_tol=1e-12)
    wrong = np.roll(logits, 1, axis=2)  # all mass on the wrong token: NLL 120 per token
    assert math.isclose(token_nll(wrong, labels)[0] / 7, 120.0, rel_tol=1e-9)


def test_nll_matches_a_direct_log_softmax_and_excludes_padding():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 6, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, size=(2, 6))
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    want, n = 0.0, 0
    for b in range(2):
        for t in range(1, 6):
            if mask[b, t]:
                row = logits[b, t - 1].astype(np.float64)
                want += math.log(np.exp(row).sum()) - row[labels[b, t]]
                n += 1
    total, count = token_nll(logits, labels, mask)
    assert count == n == 5 + 2
    assert math.isclose(total, want, rel_tol=1e-12)
    # IGNORE_INDEX labels and the attention mask exclude the same positions; garbage there changes nothing
    garbage = logits.copy()
    garbage[1, 2:] = 1e4
    ignored = np.where(mask == 1, labels, IGNORE_INDEX)
    assert math.isclose(token_nll(garbage, ignored)[0], want, rel_tol=1e-12)
    assert math.isclose(token_nll(garbage, labels, mask)[0], want, rel_tol=1e-12)


def test_streamed_metrics_equal_one_batch_and_refuse_wrong_shapes():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(5, 4, 9))
    labels = rng.integers(0, 9, size=(5, 4))
    table = {i: logits[i] for i in range(5)}
    run = lambda x: np.stack([table[int(r[0])] for r in x["row"]])  # noqa: E731 - the "model": a lookup
    batches = [({"row": np.arange(5)[:, None]}, labels)]
    got = causal_lm_metrics(run, batches, rows_per_run=2)
    acc = NLLTotal()
    acc.add(logits, labels)
    assert got["tokens"] == 15 and math.isclose(got["perplexity"], acc.metrics()["perplexity"], rel_tol=1e-12)
    assert math.isclose(got["nll"], math.log(got["perplexity"]), rel_tol=1e-12)
    with pytest.raises(ValueError, match=r"\[batch, seq, vocab\]"):
        token_nll(logits[:, 0], labels)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_nll(logits, labels + 9)


# ---- packing -----------------------------------------------------------------------------------------------------
def test_pack_blocks_is_run_clm_grouping():
    seqs = [np.array([1, 2, 3]), np.array([4, 5]), np.array([6, 7, 8, 9])]
    blocks = pack_blocks(seqs, 4)
    assert blocks.input_ids.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]  # the remainder [9] is dropped
    assert blocks.attention_mask.tolist() == [[1] * 4] * 2 and blocks.tokens == 8
    kept = pack_blocks(seqs, 4, drop_last=False, pad_id=0)
    assert kept.input_ids.tolist()[-1] == [9, 0, 0, 0] and kept.attention_mask.tolist()[-1] == [1, 0, 0, 0]
    x, y = kept.batch(np.array([2]))
    assert y.tolist() == [[9, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]  # labels = inputs, padding ignored
    sep = pack_blocks(seqs, 5, separator=99)
    assert sep.input_ids.tolist() == [[1, 2, 3, 99, 4], [5, 99, 6, 7, 8]]


def test_split_documents_is_contiguous():
    parts = split_documents(10, {"test": 0.2, "validation": 0.1})
    assert parts["train"].tolist() == list(range(7)) and parts["validation"].tolist() == [7]
    assert parts["test"].tolist() == [8, 9]
    by_value = split_documents(3, split_values=["test", "train", "dev"])
    assert by_value["test"].tolist() == [0] and by_value["validation"].tolist() == [2]


def test_build_lm_data_packs_the_corpus_exactly():
    docs = ["in the beginning god created the heaven and the earth", "and the earth was without form and void",
            "in the beginning", "god created the earth", "the heaven was void", "and god"]
    data = build_lm_data(docs, tokenizer=_word_tokenizer(), max_length=4, split={"test": 2 / 6},
                         batch_size=2, eval_batch_size=3)
    flat_train = sum((_ids(d) for d in docs[:4]), [])
    flat_test = sum((_ids(d) for d in docs[4:]), [])
    assert data.task == "causal-lm" and data.num_labels is None
    assert data.blocks["train"].input_ids.reshape(-1).tolist() == flat_train[:len(flat_train) // 4 * 4]
    assert data.blocks["test"].input_ids.tolist() == [flat_test[:4]]  # 6 test tokens: one block, 2 dropped
    assert data.extra["tokens"] == {"train": 24, "validation": 0, "test": 4}
    x, y = next(iter(data.evaluation()))
    assert x["input_ids"].shape == (1, 4) and (y == x["input_ids"]).all()
    train = list(data.train())
    again = list(data.train())  # the same seeded order every call, every block once
    assert [len(b[1]) for b in train] == [2, 2, 2] and all((a[1] == b[1]).all() for a, b in zip(train, again))
    assert sorted(map(tuple, np.concatenate([b[1] for b in train]).tolist())) == sorted(
        map(tuple, data.blocks["train"].input_ids.tolist()))
    check_task_data(data)  # 2-D labels pass the core's batch checks for this task
    assert next(iter(data.calibration())).keys() == {"input_ids", "attention_mask"}
    with pytest.raises(ValueError, match="max_length"):
        build_lm_data(docs, tokenizer=_word_tokenizer(), max_length=1)


def test_from_text_reads_a_text_file_and_a_table_column(tmp_path):
    lines = ["in the beginning god created", "", "the heaven and the earth", "and the earth was void"]
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = from_text(tmp_path / "c.txt", tokenizer=_folder(tmp_path), max_length=3, split={"test": 1 / 3})
    assert data.extra["documents"] == {"train": 2, "validation": 0, "test": 1}  # the blank line is no document
    assert data.blocks["test"].input_ids.tolist() == [_ids("and the earth")]
    rows = [("in the beginning god created", "train"), ("the heaven and the earth", "test"),
            ("and the earth was void", "train")]
    (tmp_path / "c.csv").write_text("verse,part\n" + "".join(f"{t},{s}\n" for t, s in rows), encoding="utf-8")
    table = from_text(tmp_path / "c.csv", tokenizer=_word_tokenizer(), text="verse", split_column="part",
                      max_length=2)
    assert table.extra["documents"] == {"train": 2, "validation": 0, "test": 1}
    assert table.blocks["test"].input_ids.tolist() == [_ids("the heaven"), _ids("and the")]  # "earth" dropped


# ---- recipe ------------------------------------------------------------------------------------------------------
def _recipe(data):
    return {"name": "lm", "backend": "torch", "data": data, "stages": [{"technique": "quantization",
                                                                      "mode": "weight_only"}]}


def test_recipe_validates_task_causal_lm(tmp_path):
    ok = load_recipe(_recipe({"path": "corpus.txt", "task": "causal-lm", "max_length": 256, "tokenizer": "m"}))
    assert ok.data.task == "causal-lm" and ok.data.text is None
    table = load_recipe(_recipe({"path": "c.csv", "text": "verse", "task": "causal-lm"}))
    assert table.data.text == ["verse"]
    for bad, words in [({"path": "c.csv", "task": "causal-lm"}, "needs text"),
                       ({"path": "c.txt", "text": "verse", "task": "causal-lm"}, "no columns"),
                       ({"path": "c.csv", "text": "v", "label": "y", "task": "causal-lm"}, "takes no label"),
                       ({"path": "c.txt", "task": "causal-lm", "split_column": "s"}, "no split column"),
                       ({"path": "c.csv", "text": "v", "label": "y", "task": "lm"}, "causal-lm")]:
        with pytest.raises(SpecValidationError, match=words):
            load_recipe(_recipe(bad))


def test_recipe_data_section_loads_lm_blocks(tmp_path, monkeypatch):
    from unicompress.data.recipe_data import data_problems, load_recipe_data

    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("in the beginning god created the heaven\nand the earth was void\n")
    folder = _folder(tmp_path)
    recipe = load_recipe(_recipe({"path": "corpus.txt", "task": "causal-lm", "max_length": 3,
                                  "tokenizer": str(folder), "split": {"test": 0.5}}))
    assert data_problems(recipe.data) == []
    data = load_recipe_data(recipe.data)
    assert data.task == "causal-lm" and data.blocks["train"].input_ids.tolist() == [
        _ids("in the beginning"), _ids("god created the")]
    missing = load_recipe(_recipe({"path": "corpus.txt", "task": "causal-lm"}))
    assert [p.path for p in data_problems(missing.data)] == ["data.tokenizer"]


def test_task_problems_refuse_a_model_without_token_logits():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from numpy_adapter import NumpyAdapter, NumpyMLP

    x = {"x": np.ones((2, 4), np.float32)}
    data = TaskData(evaluation=lambda: iter([(x, np.zeros((2, 4), np.int64))]), task="causal-lm")
    problems = task_problems(NumpyAdapter(), NumpyMLP(), data)
    assert len(problems) == 1 and "data.task is 'causal-lm'" in problems[0] and "[1, 3]" in problems[0]
    classification = TaskData(evaluation=lambda: iter([(x, np.zeros(2, np.int64))]))
    assert task_problems(NumpyAdapter(), NumpyMLP(), classification) == []
