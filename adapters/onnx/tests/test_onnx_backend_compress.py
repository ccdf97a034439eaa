"""The core's compress() and CLI on ONNX models: plan, execute, judge, export."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import yaml
from onnx_backend_testutil import adapter, encoder_linears, tiny

from unicompress.api import compress
from unicompress.cli import main
from unicompress.conformance.cases import task_data
from unicompress.errors import CapabilityError
from unicompress.onnx.inspect import summarize

RECIPE = {"name": "onnx-prune-int8", "backend": "onnx", "stages": [
    {"technique": "pruning", "granularity": "n_m", "n": 2, "m": 4},
    {"technique": "quantization", "mode": "static"}]}


def test_compress_prunes_then_quantizes_and_the_judge_passes(tmp_path):
    model, cfg, x = tiny()
    recipe = dict(RECIPE, export={"formats": ["onnx"], "directory": str(tmp_path)})
    result = compress(model, recipe, task_data("tiny-bert"), progress=False)  # backend picked by the recipe
    checks = [c for s in result.report.stages for c in s.checks]
    assert {c["name"] for c in checks} >= {"sparsity", "n:m pattern", "quantized layers", "output shape"}
    assert all(c["passed"] for c in checks), checks
    stats = {s.name: s for s in result.report.layers_after}
    assert {n for n, s in stats.items() if s.bits == 8} == set(encoder_linears(cfg))
    assert all(stats[n].sparsity == pytest.approx(0.5, abs=0.01) for n in encoder_linears(cfg))
    summary = summarize(result.exports["onnx"])
    assert summary.quantized and sum(q.per_channel for q in summary.qdq) == len(encoder_linears(cfg))
    assert np.asarray(adapter().run(onnx.load(str(result.exports["onnx"])), x)).shape == (4, cfg.num_labels)
    assert adapter().describe(model)[3].bits == 32  # the input model is untouched


def test_backend_auto_recognises_a_model_proto():
    model, cfg, _ = tiny()
    result = compress(model, {"backend": "auto", "stages": [{"technique": "pruning", "sparsity": 0.5}]},
                      task_data("tiny-bert"), progress=False)
    assert result.backend == "onnx"


def test_compress_refuses_an_unclaimed_spec_before_touching_the_model():
    model, _, _ = tiny()
    before = onnx.ModelProto()
    before.CopyFrom(model)
    with pytest.raises(CapabilityError, match="onnx supports"):
        compress(model, {"backend": "onnx", "stages": [{"technique": "quantization", "mode": "weight_only",
                                                          "bits": 4}]}, progress=False)
    assert model == before


def test_cli_runs_a_recipe_on_an_onnx_file(tmp_path, capsys):
    """`unicompress run` with model.factory unicompress_onnx.runtime:load_onnx, as examples/onnx_int8.yaml does."""
    model, _, _ = tiny()
    src = tmp_path / "encoder.onnx"
    onnx.save_model(model, str(src))
    recipe = {"name": "cli-int8", "backend": "onnx", "evaluate": False,
              "model": {"factory": "unicompress_onnx.runtime:load_onnx", "kwargs": {"path": str(src)}},
              "data": {"factory": "unicompress.conformance.cases:task_data", "kwargs": {"model": "tiny-bert"}},
              "stages": [{"technique": "quantization", "mode": "dynamic"}],
              "export": {"formats": ["onnx"], "directory": str(tmp_path / "out")}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--no-progress", "--json", "--allow-factory", "unicompress_onnx.runtime",
                 "--allow-factory", "unicompress.conformance.cases"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "onnx"
    exported = onnx.load(str(tmp_path / "out" / "cli-int8.onnx"))
    assert sum(n.op_type == "MatMulInteger" for n in exported.graph.node) == 12


def test_the_example_recipe_validates_for_the_onnx_backend():
    from pathlib import Path

    from unicompress.recipe_io import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "examples" / "onnx_int8.yaml")
    assert recipe.backend == "onnx" and recipe.model.factory == "unicompress_onnx.runtime:load_onnx"
    (stage,) = recipe.stages
    assert adapter().capabilities().problems(stage) == [] and adapter().refusals(stage) == []
    assert (stage.mode.value, stage.bits, stage.granularity.value) == ("dynamic", 8, "per_channel")
