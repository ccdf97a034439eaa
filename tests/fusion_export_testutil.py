"""The check each backend's test_<fw>_fusion_export.py runs: the zoo tiny-bert through compress() with
``export: {optimize: ort-transformers}`` (after a float pruning stage or an int8 static stage, optionally with int8
embeddings). The export must hold exactly the fused operators expected of that backend's exporter (no unfused
Softmax where Attention fused), ONNX Runtime's logits of it must equal those of the compressed model's own unfused
export (the backend's export_onnx) within `FUSION_TOLERANCE` of the largest logit, and the run report must carry
the counts. The inputs pad every row (mask 0 after 8 of 12 tokens); dropping the padding moves both files' logits alike, by
more than 100x what the files differ, so a fused Attention that lost the mask fails."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx

import embeddings_export_testutil as E
import unicompress as uc
from unicompress import zoo
from unicompress.backend import get_backend
from unicompress.onnx.fusion import FUSED_OPS, FUSION_TOLERANCE
from unicompress.onnx.runtime import run_onnx

#: the fused operators of tiny-bert (2 layers) measured on each exporter's float export: two SkipLayerNorms per
#: layer, one Attention and one BiasGelu per layer; torch.onnx's embeddings also become EmbedLayerNormalization
FLOAT = {"Attention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2}


def padded_inputs(seed: int = 7) -> dict[str, np.ndarray]:
    x = zoo.inputs_for("tiny-bert", E.CFG, batch=4, length=12, seed=seed)
    x["attention_mask"][:, 8:] = 0
    return x


def fused_counts(path: Any) -> dict[str, int]:
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return {op: ops[op] for op in FUSED_OPS if ops.get(op)}


def check_fusion_export(backend: str, model: Any, stages: str, tmp_path, expected: dict[str, int],
                        embeddings: str = "float") -> dict:
    """Run the recipe with ``optimize: ort-transformers`` on `model` and check the fused file against the
    compressed model's unfused export; returns the measured numbers."""
    recipe = {"name": f"tiny-{stages}", "backend": backend, "stages": E.STAGES[stages], "evaluate": False,
              "export": {"directory": str(tmp_path / "fused"), "formats": ["onnx"], "optimize": "ort-transformers",
                         "embeddings": embeddings}}
    small = uc.compress(model, recipe, E.task_data(), progress=False, judge=False)
    path = small.exports["onnx"]
    counts = fused_counts(path)
    assert counts == expected, counts
    if expected.get("Attention"):
        assert not any(n.op_type == "Softmax" for n in onnx.load(str(path)).graph.node)
    adapter = get_backend(backend)
    example = zoo.inputs_for("tiny-bert", E.CFG, batch=8, length=8, seed=0)  # what compress() exported with
    plain = adapter.export_onnx(small.model, tmp_path / "plain.onnx", example, 17)
    if embeddings != "float":
        from unicompress.onnx.embeddings import quantize_embeddings_file

        quantize_embeddings_file(plain, embeddings)
    x = padded_inputs()
    fused, unfused = run_onnx(path, x), run_onnx(plain, x)
    tolerance = FUSION_TOLERANCE * float(np.abs(unfused).max())
    diff = float(np.abs(fused - unfused).max())
    assert diff <= tolerance, (diff, tolerance)
    # the mask reaches the fused Attention: without it both files move alike, by far more than they differ
    full = {**x, "attention_mask": np.ones_like(x["attention_mask"])}
    moved = run_onnx(plain, full) - unfused
    assert float(np.abs(moved).max()) > 100 * diff
    np.testing.assert_allclose(run_onnx(path, full) - fused, moved, atol=10 * diff + 1e-9)
    line = [n for n in small.report.export_notes if n.startswith("optimize ort-transformers: ")]
    assert len(line) == 1 and all(f"{op} {n}" in line[0] for op, n in expected.items()), small.report.export_notes
    return {"counts": counts, "max_abs": diff, "tolerance": tolerance}
