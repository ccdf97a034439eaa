"""ONNX Runtime's transformer fusions on the paddle backend's ONNX export (export: {optimize: ort-transformers});
the checks: tests/fusion_export_testutil.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import fusion_export_testutil as F  # noqa: E402


def _build():
    from unicompress.backend import get_backend

    return get_backend("paddle").build_model("tiny-bert", seed=0)


@pytest.mark.parametrize("stages,expected", [
    ("prune", F.FLOAT),
    # ONNX Runtime's Attention fusion needs float Q/K/V weights; a QDQ file has DequantizeLinear there
    ("int8-static", {"SkipLayerNormalization": 4, "BiasGelu": 2}),
])
def test_export_fuses_what_the_exporter_allows(tmp_path, stages, expected):
    F.check_fusion_export("paddle", _build(), stages, tmp_path, expected)
