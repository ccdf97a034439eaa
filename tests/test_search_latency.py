"""The search's latency objective: every plan's model is exported and timed on the runtime against the
uncompressed model's export in one interleaved run; objectives are latencies relative to the baseline (1.0)."""
from __future__ import annotations

import math

import pytest

pytest.importorskip("onnxruntime")

from unicompress.backend import get_backend  # noqa: E402
from unicompress.conformance.cases import task_data  # noqa: E402
from unicompress.errors import SpecValidationError  # noqa: E402
from unicompress.search import load_search, search  # noqa: E402

SEARCH = {"name": "tiny-latency", "backend": "onnx",
          "search": {"tolerance": 1.0, "objective": "latency", "runtime": "onnxruntime", "latency_batch": 4,
                     "latency_runs": 3, "trials": 2, "selector": {"roles": ["ffn_in"]},
                     "candidates": [{"technique": "quantization", "mode": "dynamic"},
                                    {"technique": "pruning", "sparsity": 0.5}]}}


def test_latency_search_times_every_plan_against_the_baseline(tmp_path):
    adapter = get_backend("onnx")
    base, spec = load_search(SEARCH)
    result = search(adapter.build_model("tiny-bert"), base, spec, task_data("tiny-bert"), out=tmp_path,
                    progress=False)
    assert result.baseline_objective == 1.0
    assert len(result.sensitivity) == 4 and all(r.usable for r in result.sensitivity)  # 2 ffn_in layers x 2
    timed = [t for t in result.trials if t.plan]
    assert timed and all(math.isfinite(t.objective) and 0.05 < t.objective < 20 for t in timed)
    summary = (tmp_path / "search.md").read_text()
    assert "objective latency" in summary and "baseline: accuracy" in summary and "1.000" in summary
    assert "faster" in (tmp_path / "pareto.md").read_text()


def test_an_unknown_runtime_is_refused_when_the_search_file_is_read():
    bad = {**SEARCH, "search": {**SEARCH["search"], "runtime": "tensorrt-nope"}}
    with pytest.raises(SpecValidationError, match="tensorrt-nope.*known: .*onnxruntime"):
        load_search(bad)
