"""The core's check before work for distillation across vocabularies (`unicompress.data.teacher`)."""
import numpy as np
import pytest

from unicompress.backend.types import LayerInfo, LayerRole
from unicompress.data import from_arrays
from unicompress.data.teacher import (TokenizerMismatchError, check_distillation_data, distillation_data,
                                      distillation_problems, word_embedding_rows)
from unicompress.specs import DistillationSpec, QuantizationSpec


def _embedding(name, rows):
    return LayerInfo(name, "embedding", LayerRole.embedding, (rows, 32))


def test_word_embedding_rows_picks_the_token_embedding():
    layers = [_embedding("bert.embeddings.word_embeddings", 30522), _embedding("bert.embeddings.position_embeddings", 512),
              LayerInfo("classifier", "linear", LayerRole.classifier, (2, 32))]
    assert word_embedding_rows(layers) == 30522
    assert word_embedding_rows([_embedding("emb", 100)]) == 100  # the only embedding
    assert word_embedding_rows([_embedding("a", 100), _embedding("b", 7)]) is None  # cannot tell: no check


def test_vocabularies_of_different_sizes_without_teacher_inputs_are_refused():
    ids = np.random.default_rng(0).integers(0, 14, size=(8, 5))
    data = from_arrays({"input_ids": ids, "attention_mask": np.ones_like(ids)}, np.arange(8) % 2)
    response = DistillationSpec(kinds=["response"])
    assert distillation_data(data) is data
    assert distillation_problems([response], data, 14, 14) == []
    assert distillation_problems([QuantizationSpec(mode="dynamic"), response], data, 14, None) == []
    problems = distillation_problems([QuantizationSpec(mode="dynamic"), response], data, 14, 30522)
    assert len(problems) == 1 and problems[0].startswith(
        "stages[1] (distillation): the teacher's token embedding has 30522 rows and the student's 14")
    with pytest.raises(TokenizerMismatchError, match="refused before work"):
        check_distillation_data([response], data, student_rows=14, teacher_rows=30522)
