"""A tiny search end to end on the torch backend: sensitivity, greedy within the tolerance, the searched recipe
reproduced by compress(), the Pareto front, and `unicompress search` from the command line."""
import json

import numpy as np
import pytest

pytest.importorskip("torch")

import unicompress as uc  # noqa: E402
from unicompress.backend import TaskData, get_backend  # noqa: E402
from unicompress.conformance.cases import task_data  # noqa: E402
from unicompress.recipe_io import load_recipe  # noqa: E402
from unicompress.search import dominates, load_search, objective_of, search  # noqa: E402

SEARCH = {"name": "tiny", "backend": "torch",
          "search": {"tolerance": 0.07, "objective": "nonzero", "trials": 12,
                     "candidates": [{"technique": "quantization", "mode": "weight_only", "bits": 2},
                                    {"technique": "pruning", "sparsity": 0.9}]}}


@pytest.fixture(scope="module")
def trained():
    """tiny-bert fine-tuned for 60 steps (random weights predict one class for every input, so no compression
    could change its accuracy); validation = the first 2 batches, test = the last 2."""
    adapter = get_backend("torch")
    d = task_data("tiny-bert")
    model = uc.compress(adapter.build_model("tiny-bert"),
                        {"stages": [{"technique": "finetune", "training": {"steps": 60, "learning_rate": 3e-3,
                                                                           "batch_size": 8}}], "evaluate": False},
                        d, backend="torch", progress=False).model
    batches = list(d.evaluation())
    data = TaskData(train=d.train, calibration=d.calibration, evaluation=lambda: iter(batches[2:]), num_labels=3,
                    extra={"validation": lambda: iter(batches[:2])})
    return adapter, model, data


def test_tiny_search_end_to_end(trained, tmp_path):
    adapter, model, data = trained
    base, spec = load_search(SEARCH)
    result = search(model, base, spec, data, out=tmp_path, progress=False)
    assert result.baseline_metric == 1.0 and result.validation_source == "data.extra['validation']"
    # sensitivity: every searched encoder Linear (12) x 2 candidates, measured, some of them hurting
    assert len(result.sensitivity) == 24 and all(r.usable for r in result.sensitivity)
    assert max(r.drop for r in result.sensitivity) > 0
    kept = [t for t in result.trials if t.kept]
    assert kept and all(t.drop <= spec.tolerance for t in kept)
    best = result.best
    assert best.drop <= spec.tolerance and best.objective < result.baseline_objective
    assert len(result.trials) <= spec.trials + 1  # + the uncompressed baseline
    # the written recipe is ordinary: it loads, and compress() of it reproduces the searched numbers exactly
    recipe = load_recipe(tmp_path / "searched.yaml")
    again = uc.compress(model, recipe, data, backend="torch", progress=False)
    assert objective_of(again.report.layers_after, "nonzero") == best.objective == result.reproduced_objective
    assert adapter.evaluate(again.model, data.extra["validation"]())["accuracy"] == best.metric
    assert again.report.metrics_after == result.test_metrics["after"]  # the test split, evaluated once
    front = result.front
    assert not any(dominates(a, b) for a in front for b in front)
    assert best in front or any(f.objective <= best.objective and f.drop <= best.drop for f in front)
    for name in ("trials.json", "pareto.md", "pareto.png", "sensitivity.json", "sensitivity.md", "sensitivity.png",
                 "search.md"):
        assert (tmp_path / name).stat().st_size > 0
    stored = json.loads((tmp_path / "trials.json").read_text())
    assert stored["best"] == best.number and len(stored["trials"]) == len(result.trials)
    # a second search reads the sensitivities from the cache: same rows, no new sensitivity runs
    again_result = search(model, base, spec, data, out=tmp_path, progress=False)
    assert [r.drop for r in again_result.sensitivity] == [r.drop for r in result.sensitivity]
    assert again_result.best.objective == best.objective


@pytest.mark.slow  # about 8-14 s on 2 cores: builds and searches from the command line
def test_cli_search_writes_a_recipe_that_runs(tmp_path):
    from unicompress.cli import main

    f = tmp_path / "search.yaml"
    f.write_text("name: cli-search\nbackend: torch\nmodel: {zoo: tiny-bert}\n"
                 "data: {factory: 'unicompress.conformance.cases:task_data', kwargs: {model: tiny-bert}}\n"
                 "search:\n  selector: {include: ['*layer.0.*']}\n  candidates:\n"
                 "    - {technique: quantization, mode: weight_only, bits: 8}\n"
                 "    - {technique: quantization, mode: weight_only, bits: 4}\n")
    out = tmp_path / "sd"
    status = main(["search", str(f), "--tolerance", "0.01", "--objective", "bytes", "--trials", "4", "--out", str(out),
                   "--no-progress", "--allow-factory", "unicompress.conformance"])
    assert status == 0
    trials = json.loads((out / "trials.json").read_text())
    assert trials["objective"] == "bytes" and trials["tolerance"] == 0.01 and len(trials["trials"]) == 5
    recipe = load_recipe(out / "searched.yaml")
    assert recipe.name == "cli-search-searched" and recipe.model.zoo == "tiny-bert"
    assert [s.technique for s in recipe.stages] == ["quantization"]
    assert set(recipe.stages[0].selector.include) <= {l.name for l in get_backend("torch").layers(
        get_backend("torch").build_model("tiny-bert")) if ".layer.0." in l.name}
    bits = {o.pattern: o.bits for o in recipe.stages[0].overrides}
    assert set(bits.values()) <= {8, 4} and np.isfinite(trials["baseline_objective"])
