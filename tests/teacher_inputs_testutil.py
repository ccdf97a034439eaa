"""The two checks each backend's test_<fw>_teacher_inputs.py runs: distillation between a teacher that reads the
real MiniLM tokenizer's 30,522-token ids and a student built for the 14-token WordPiece tokenizer of
test_data_teacher.py (issue #14). The first logged loss must be the response KL of the teacher on ITS ids against
the student on its own (not the teacher on the student's ids), the KL must fall, the teacher stays frozen, and
without teacher inputs the run is refused before work. A backend supplies how to build, run and read its BERT."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

import unicompress as uc
from unicompress.data import TokenizerMismatchError, build_text_data
from unicompress.data.teacher import distillation_data, split_teacher_inputs
from unicompress.zoo.bert import minilm_path

from test_data_teacher import WORDS, _other_tokenizer


@dataclass
class Backend:
    """How one backend's test builds (`bert(tokenizer_folder, seed)`), runs and reads its zoo BERT."""

    name: str
    bert: Callable[[Any, int], Any]
    run: Callable[[Any, dict], np.ndarray]
    weights: Callable[[Any], list]
    sharpen: Callable[[Any], None] = lambda teacher: None  # make the teacher's outputs far from uniform


def _columns(n: int = 48) -> dict[str, list]:
    """Texts of 2-5 of the small vocabulary's words; label 1 when they mention money (stocks/fell)."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 6)))) for _ in range(n)]
    return {"text": texts, "label": [int("stocks" in t or "fell" in t) for t in texts]}


def _data(student_tok, **kw):
    return build_text_data(_columns(), text="text", label="label", tokenizer=student_tok, split={"test": 0.25},
                           max_length=16, batch_size=8, **kw)


def _kl(teacher_logits: np.ndarray, student_logits: np.ndarray) -> float:
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    t, s = log_softmax(teacher_logits), log_softmax(student_logits)
    return float((np.exp(t) * (t - s)).sum(-1).mean())


def _train_kl(b: Backend, teacher, student, data) -> float:
    """KL(teacher || student) over the training rows, each model on its own ids."""
    values, rows = [], []
    for x, _ in data.extra["teacher_data"].batches("train", 64):
        s_in, t_in = split_teacher_inputs(x)
        values.append(_kl(b.run(teacher, t_in), b.run(student, s_in)) * len(x["input_ids"]))
        rows.append(len(x["input_ids"]))
    return sum(values) / sum(rows)


def check_teacher_reads_its_own_ids_and_the_kl_falls(b: Backend, tmp_path) -> None:
    student_tok = _other_tokenizer(tmp_path / "student")
    data = _data(student_tok, teacher_tokenizer=minilm_path())
    teacher, student = b.bert(minilm_path(), 0), b.bert(student_tok, 1)
    b.sharpen(teacher)
    frozen = b.weights(teacher)
    result = uc.distill(student, teacher, data=data, kinds=["response"], alpha=1.0, temperature=1.0,
                        backend=b.name, training={"steps": 20, "learning_rate": 5e-3, "batch_size": 8, "seed": 0})
    # the first step's loss is computed before any update, on the first batch the loop draws
    x, _ = next(distillation_data(data).endless_train(8))
    s_in, t_in = split_teacher_inputs(x)
    assert t_in["input_ids"][0, 0] == 101 and s_in["input_ids"][0, 0] == 2  # MiniLM's [CLS], the small <s>
    own = _kl(b.run(teacher, t_in), b.run(student, s_in))
    wrong = _kl(b.run(teacher, {**s_in}), b.run(student, s_in))  # the teacher on the student's ids
    loss = [v for _, v in result.report.stages[0].history["loss"]]
    print(f"first loss {loss[0]:.6f}: teacher on its own ids {own:.6f}, on the student's {wrong:.6f}")
    assert loss[0] == pytest.approx(own, rel=1e-3) and abs(own - wrong) > 10 * abs(loss[0] - own)
    assert all(np.array_equal(p, q) for p, q in zip(frozen, b.weights(teacher)))  # the teacher is frozen
    before, after = _train_kl(b, teacher, student, data), _train_kl(b, teacher, result.model, data)
    print(f"response KL on the train rows: {before:.5f} -> {after:.5f}")
    assert after < 0.5 * before, (before, after)


def check_without_teacher_inputs_the_run_is_refused_before_work(b: Backend, tmp_path) -> None:
    student_tok = _other_tokenizer(tmp_path / "student")
    teacher, student = b.bert(minilm_path(), 0), b.bert(student_tok, 1)
    before = b.weights(student)
    with pytest.raises(TokenizerMismatchError, match="token embedding has 30522 rows and the student's 14"):
        uc.distill(student, teacher, data=_data(student_tok), kinds=["response"], backend=b.name,
                   training={"steps": 5})
    with pytest.raises(TokenizerMismatchError, match=r"kinds \['feature'\] compare token positions"):
        uc.distill(student, teacher, data=_data(student_tok, teacher_tokenizer=minilm_path()),
                   kinds=["response", "feature"], backend=b.name, training={"steps": 5})
    assert all(np.array_equal(p, q) for p, q in zip(before, b.weights(student)))
