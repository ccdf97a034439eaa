"""ONNX Runtime's transformer fusions on the tensorflow backend's ONNX export (export: {optimize: ort-transformers});
the checks: tests/fusion_export_testutil.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import fusion_export_testutil as F  # noqa: E402


def _build():
    from unicompress.backend import get_backend

    return get_backend("tensorflow").build_model("tiny-bert", seed=0)


@pytest.mark.slow  # tf2onnx twice: ~8 s
def test_float_export_fuses_attention_layernorm_and_gelu(tmp_path):
    # collapse_tensordot (12 Dense layers) and canonical_attention_mask make tf2onnx's graph ONNX Runtime's pattern
    F.check_fusion_export("tensorflow", _build(), "prune", tmp_path, F.FLOAT)


@pytest.mark.slow  # tf2onnx twice: ~8 s
def test_int8_static_export_fuses_layernorm_and_gelu(tmp_path):
    # the QDQ Dense layers keep their Reshapes (the Q/DQ pair sits between them), so no BiasGelu and no Attention
    F.check_fusion_export("tensorflow", _build(), "int8-static", tmp_path, {"SkipLayerNormalization": 4, "Gelu": 2})
