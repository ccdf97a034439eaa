"""int8 embedding tables in the tensorflow backend's ONNX export (export: {embeddings: int8}); the checks:
tests/embeddings_export_testutil.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import embeddings_export_testutil as E  # noqa: E402


def _build():
    from unicompress.backend import get_backend

    return get_backend("tensorflow").build_model("tiny-bert", seed=0)


@pytest.mark.parametrize("stages", ["prune", pytest.param("int8-static", marks=pytest.mark.slow)])  # 2 tf2onnx: 7 s
def test_word_embeddings_are_int8_in_the_export(tmp_path, stages):
    E.check_embeddings_export("tensorflow", _build(), stages, tmp_path)


@pytest.mark.slow  # tf2onnx twice: 7 s
def test_word_embeddings_are_int4_in_the_export(tmp_path):  # ONNX Runtime's GatherBlockQuantized
    E.check_embeddings_export("tensorflow", _build(), "prune", tmp_path, form="int4")
