"""The benchmark's smoke mode runs end to end on torch and writes consistent results (tiny-bert, seconds)."""
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("matplotlib")

from unicompress.backend import available_backends  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.bench


def _bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # a folder of scripts, not a package
    import bench
    return bench


def test_smoke_benchmark_measures_a_structured_pruning_run(tmp_path, monkeypatch):
    if "torch" not in available_backends():
        pytest.skip("the torch adapter is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bench = _bench()
    status = bench.main(["--smoke", "--in-process", "--backends", "torch", "--scenarios", "prune_heads_ffn",
                         "--runs", "1", "--overhead-repeats", "1", "--native-repeats", "1", "--out", str(tmp_path),
                         "--keep-onnx"])
    doc = json.loads((tmp_path / "results.json").read_text())
    assert status == 0 and doc["smoke"] is True
    (row,) = doc["rows"]
    assert row["status"] == "ok", row.get("error")
    before, after = row["before"], row["after"]
    # tiny-bert: 2 layers x (4 heads of 8 + 64 FFN neurons); half of each removed
    assert after["params"] < before["params"] and after["params"] == after["nonzero"]
    assert row["ratios"]["params"] == pytest.approx(before["params"] / after["params"])
    assert before["onnx_mb"] > after["onnx_mb"] > 0
    assert all(row[k][f"latency_b{b}_ms"] > 0 for k in ("before", "after") for b in (1, 32))
    assert 0 <= after["onnx_accuracy"] <= 1 and row["compress_seconds"] > 0 and row["peak_rss_mb"] > 0
    # unicompress and the direct handler calls give the same model
    assert row["overhead"]["max_abs_logit_diff"] <= 1e-5 and row["overhead"]["time_ratio"] > 0
    native = doc["native_comparisons"]["torch"]["native_comparison"]
    assert native["same_masks"] is True and native["max_abs_logit_diff"] == 0.0
    md = (tmp_path / "results.md").read_text()
    assert "prune_heads_ffn" in md and "torch.nn.utils.prune" in md
    assert (tmp_path / "results.png").stat().st_size > 1000
    # --keep-onnx left the files; --remeasure times them again and rewrites only the latencies
    assert (tmp_path / "runs" / "torch-prune_heads_ffn" / "before.onnx").exists()
    assert bench.main(["--smoke", "--remeasure", "--runs", "2", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    (row2,) = again["rows"]
    assert row2["latency_remeasured"]["runs"] == 2 and row2["after"]["params"] == after["params"]
    assert row2["ratios"]["latency_b32"] == pytest.approx(row2["before"]["latency_b32_ms"] /
                                                          row2["after"]["latency_b32_ms"])
    # --collect rebuilds the row from the run folder alone (an interrupted run loses nothing)
    (tmp_path / "results.json").unlink()
    assert bench.main(["--smoke", "--collect", "--backends", "torch", "--scenarios", "prune_heads_ffn",
                       "--no-overhead", "--out", str(tmp_path)]) == 0
    (row3,) = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert row3["status"] == "ok" and row3["after"]["params"] == after["params"] and "collected_from" in row3
    assert row3["ratios"]["params"] == row["ratios"]["params"]
    # --native-only re-runs the by-hand comparison and keeps the rows
    assert bench.main(["--smoke", "--native-only", "--in-process", "--native-repeats", "2", "--backends", "torch",
                       "--out", str(tmp_path)]) == 0
    final = json.loads((tmp_path / "results.json").read_text())
    assert [r["scenario"] for r in final["rows"]] == ["prune_heads_ffn"]
    assert final["native_comparisons"]["torch"]["native_comparison"]["repeats"] == 2


def test_interleaved_timing_alternates_the_order_and_keeps_the_last_results():
    bench = _bench()
    calls = []

    def first():
        calls.append("a")
        return len(calls)

    def second():
        calls.append("b")
        return -len(calls)

    t_a, t_b, last_a, last_b = bench.interleaved(first, second, 4)
    assert "".join(calls) == "abbaabba"  # neither always runs second
    assert len(t_a) == len(t_b) == 4 and min(t_a + t_b) >= 0
    assert (last_a, last_b) == (8, -7)


def test_cli_runs_a_smoke_recipe_with_a_registry_dataset(tmp_path, monkeypatch, capsys):
    """`unicompress run` resolves `data: {dataset: bbc-news}` through unicompress.data."""
    if "torch" not in available_backends():
        pytest.skip("the torch adapter is not installed")
    sys.path.insert(0, str(ROOT / "examples"))
    import run_example

    from unicompress import load_recipe, save_recipe
    from unicompress.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = run_example.load_example(ROOT / "examples" / "sparsity_2of4.yaml", smoke=True)
    recipe = load_recipe({**recipe.model_dump(mode="json"), "export": {"directory": str(tmp_path / "out")}})
    path = save_recipe(recipe, tmp_path / "smoke.yaml")
    assert main(["run", str(path), "--no-progress", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["backend"] == "torch" and report["after"]["sparsity"] > 0.3  # 2:4 on the encoder Linears
    assert report["metrics_after"]["accuracy"] >= 0
    assert (tmp_path / "out" / f"{recipe.name}.onnx").stat().st_size > 0


def test_by_hand_pruning_matches_unicompress_on_every_installed_backend(tmp_path, monkeypatch):
    """native_calls.py prunes the same weights as unicompress on each framework (workers: one framework each)."""
    backends = [b for b in ("tensorflow", "paddle") if b in available_backends()]
    if not backends:
        pytest.skip("neither the tensorflow nor the paddle adapter is installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bench = _bench()
    assert bench.main(["--smoke", "--native-only", "--native-repeats", "1", "--backends", ",".join(backends),
                       "--out", str(tmp_path)]) == 0
    found = json.loads((tmp_path / "results.json").read_text())["native_comparisons"]
    for backend in backends:
        assert found[backend]["status"] == "ok", found[backend].get("error")
        n = found[backend]["native_comparison"]
        assert n["same_masks"] is True and n["max_abs_logit_diff"] <= 1e-5 and n["layers"] > 0, (backend, n)
    assert "pruning call made by hand" in (tmp_path / "results.md").read_text()
