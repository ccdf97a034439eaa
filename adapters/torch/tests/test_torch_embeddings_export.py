"""int8 embedding tables in torch's ONNX export (export: {embeddings: int8}); the checks:
tests/embeddings_export_testutil.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import embeddings_export_testutil as E  # noqa: E402


def _build():
    from unicompress_torch.models import build_model

    return build_model("tiny-bert", seed=0)


@pytest.mark.parametrize("stages", ["prune", "int8-static"])
def test_word_embeddings_are_int8_in_the_export(tmp_path, stages):
    E.check_embeddings_export("torch", _build(), stages, tmp_path)


def test_word_embeddings_are_int4_in_the_export(tmp_path):  # ONNX Runtime's GatherBlockQuantized
    E.check_embeddings_export("torch", _build(), "prune", tmp_path, form="int4")
