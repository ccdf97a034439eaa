"""ONNX Runtime's transformer fusions on the torch backend's ONNX export (export: {optimize: ort-transformers});
the checks: tests/fusion_export_testutil.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import fusion_export_testutil as F  # noqa: E402


def _build():
    from unicompress.backend import get_backend

    return get_backend("torch").build_model("tiny-bert", seed=0)


def test_float_export_fuses_attention_layernorm_gelu_and_embeddings(tmp_path):
    F.check_fusion_export("torch", _build(), "prune", tmp_path, {"EmbedLayerNormalization": 1, **F.FLOAT})


def test_int8_static_export_fuses_layernorm_and_gelu_around_the_qdq_matmuls(tmp_path):
    # ONNX Runtime's Attention fusion needs float Q/K/V weights; a QDQ file has DequantizeLinear there
    F.check_fusion_export("torch", _build(), "int8-static", tmp_path, {"SkipLayerNormalization": 4, "BiasGelu": 2})


def test_int8_embeddings_then_fusion_keeps_the_integer_table(tmp_path):
    # EmbedLayerNormalization reads a float table: with int8 embeddings (rewritten first) it does not fuse
    F.check_fusion_export("torch", _build(), "prune", tmp_path, F.FLOAT, embeddings="int8")
    import numpy as np
    import onnx
    from onnx import numpy_helper

    path = next((tmp_path / "fused").glob("*.onnx"))
    ints = [t for t in onnx.load(str(path)).graph.initializer if numpy_helper.to_array(t).dtype == np.int8]
    assert [tuple(t.dims) for t in ints] == [(F.E.CFG.vocab_size, F.E.CFG.hidden_size)]


def test_optimize_is_refused_before_work_for_a_model_without_attention(tmp_path):
    import torch

    from unicompress.onnx.fusion import FusionError
    import unicompress as uc

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = {"name": "mlp", "backend": "torch", "evaluate": False,
              "stages": [{"technique": "pruning", "granularity": "unstructured", "sparsity": 0.5}],
              "export": {"directory": str(tmp_path / "out"), "formats": ["onnx"], "optimize": "ort-transformers"}}
    with pytest.raises(FusionError, match="no Transformer structure"):
        uc.compress(model, recipe, progress=False, export_example=torch.randn(2, 8).numpy())
    assert not (tmp_path / "out" / "mlp.onnx").exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
