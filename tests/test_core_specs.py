"""Spec validation: good specs load, bad ones fail with one message per problem naming field, value, rule."""
import json

import pytest

import unicompress as uc
from unicompress.recipe_io import dump_text, load_recipe, load_stage, recipe_schema, save_recipe
from unicompress.specs import Granularity, PruningSpec, QuantizationSpec, Recipe

FULL_RECIPE = """
name: everything
backend: torch
model: {zoo: minilm-l6, kwargs: {num_labels: 5}}
data: {dataset: bbc-news, kwargs: {max_length: 128}}
stages:
  - technique: distillation
    kinds: [response, feature, relation]
    temperature: 4
    alpha: 0.7
    feature_loss: cosine
    layer_map: [[0, 1], [1, 3], [2, 5]]
    student: {keep_layers: [1, 3, 5]}
    training: {steps: 50, learning_rate: 1.0e-4, distributed: data_parallel}
  - technique: pruning
    granularity: head
    sparsity: 0.5
    norm: l1
    selector: {include: ["*attention*"], exclude: ["*layer.0.*"]}
  - technique: pruning
    granularity: unstructured
    sparsity: 0.8
    criterion: movement
    scope: global
    schedule: {kind: polynomial, initial_sparsity: 0.1, begin_step: 0, end_step: 40, frequency: 2}
    training: {steps: 40}
  - technique: low_rank
    energy: 0.95
  - technique: finetune
    training: {steps: 10}
  - technique: quantization
    mode: static
    bits: 8
    scheme: asymmetric
    granularity: per_tensor
    calibration: {method: percentile, percentile: 99.9, num_batches: 4}
    overrides:
      - {pattern: "*classifier*", skip: true}
      - {pattern: "*intermediate*", bits: 4, granularity: per_channel}
export: {formats: [onnx, native], directory: out, opset: 17}
"""


def test_full_recipe_loads_with_every_technique():
    recipe = load_recipe(FULL_RECIPE)
    assert [s.technique for s in recipe.stages] == ["distillation", "pruning", "pruning", "low_rank", "finetune",
                                                    "quantization"]
    assert recipe.stages[2].target_sparsity == 0.8
    assert recipe.stages[5].overrides[1].bits == 4


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_save_load_is_an_exact_round_trip(tmp_path, fmt):
    recipe = load_recipe(FULL_RECIPE)
    path = save_recipe(recipe, tmp_path / f"r.{fmt}")
    again = load_recipe(path)
    assert again == recipe
    assert dump_text(again, fmt) == dump_text(recipe, fmt)


@pytest.mark.parametrize("data, path, fragment", [
    ({"technique": "pruning", "sparsity": 1.5}, "sparsity", "< 1"),
    ({"technique": "quantization", "bits": 0}, "bits", ">= 2"),
    ({"technique": "pruning", "granularity": "n_m", "n": 4, "m": 2}, "", "n (4) must be smaller than m (2)"),
    ({"technique": "pruning", "granularity": "n_m", "n": 2}, "", "needs both n and m"),
    ({"technique": "pruning", "granularity": "unstructured"}, "", "needs sparsity"),
    ({"technique": "pruning", "granularity": "blocky", "sparsity": 0.5}, "granularity", "allowed"),
    ({"technique": "pruning", "sparsity": "half"}, "sparsity", "valid number"),
    ({"technique": "pruning", "sparsity": 0.5, "criterion": "movement"}, "", "training"),
    ({"technique": "quantization", "mode": "qat"}, "", "training"),
    ({"technique": "quantization", "mapping": "log", "mode": "static"}, "", "weight_only"),
    ({"technique": "low_rank"}, "", "exactly one of rank or energy"),
    ({"technique": "low_rank", "rank": 4, "energy": 0.5}, "", "exactly one of rank or energy"),
    ({"technique": "distillation", "kinds": []}, "kinds", "at least 1"),
    ({"technique": "distillation", "student": {"keep_layers": [3, 1]}}, "student", "increasing"),
])
def test_bad_stage_names_field_value_and_rule(data, path, fragment):
    with pytest.raises(uc.SpecValidationError) as info:
        load_recipe({"stages": [data]})
    problems = info.value.problems
    assert len(problems) == 1, str(info.value)
    assert problems[0].path == f"stages[0].{path}".rstrip(".")
    assert fragment in problems[0].allowed, problems[0].allowed


def test_misspelt_keys_get_did_you_mean_and_all_problems_are_listed():
    with pytest.raises(uc.SpecValidationError) as info:
        load_recipe({"backnd": "torch", "stages": [{"technique": "pruning", "sparsty": 0.5},
                                                   {"technique": "quantisation"}]})
    text = str(info.value)
    assert "did you mean 'backend'" in text
    assert "did you mean 'sparsity'" in text
    assert "did you mean 'quantization'" in text
    assert len(info.value.problems) == 3  # backnd, sparsty, quantisation


def test_nested_unknown_key_suggests_from_the_nested_model():
    with pytest.raises(uc.SpecValidationError) as info:
        load_recipe({"stages": [{"technique": "quantization", "calibration": {"methd": "mse"}}]})
    (problem,) = info.value.problems
    assert problem.path == "stages[0].calibration.methd"
    assert "did you mean 'method'" in problem.allowed


def test_duplicate_yaml_keys_and_broken_yaml_are_reported():
    with pytest.raises(uc.SpecValidationError, match="duplicate key 'backend'"):
        load_recipe("backend: torch\nbackend: paddle\nstages: []\n")
    with pytest.raises(uc.SpecValidationError, match="line 3"):
        load_recipe("stages:\n  - technique: [pruning\n")


def test_yaml_python_tags_are_refused():
    with pytest.raises(uc.SpecValidationError):
        load_recipe("!!python/object/apply:os.system ['echo pwned']\n")


def test_quantization_must_be_last_and_single():
    with pytest.raises(uc.SpecValidationError, match="quantize last"):
        load_recipe({"stages": [{"technique": "quantization", "mode": "dynamic"},
                                {"technique": "pruning", "sparsity": 0.5}]})


def test_specs_are_frozen_and_versioned():
    spec = PruningSpec(sparsity=0.5)
    assert spec.version == "1"
    with pytest.raises(Exception):
        spec.sparsity = 0.9  # type: ignore[misc]


def test_capability_items_name_what_a_backend_must_support():
    spec = load_stage({"technique": "pruning", "granularity": "n_m", "n": 2, "m": 4})
    assert spec.granularity is Granularity.n_m
    assert ("granularity", "n_m") in list(spec.capability_items())
    q = QuantizationSpec(mode="static", bits=8, overrides=[{"pattern": "*ffn*", "bits": 4}])
    items = list(q.capability_items())
    assert ("bits", 8) in items and ("bits", 4) in items and ("overrides", True) in items
    assert ("calibration.method", "minmax") in items


def test_json_schema_is_valid_and_covers_every_technique():
    jsonschema = pytest.importorskip("jsonschema")
    schema = recipe_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    text = json.dumps(schema)
    for technique in ("pruning", "quantization", "distillation", "low_rank", "finetune"):
        assert f'"{technique}"' in text
    recipe_data = load_recipe(FULL_RECIPE).model_dump(mode="json")
    jsonschema.validate(recipe_data, schema)


def test_selector_defaults_skip_embeddings_and_head():
    sel = uc.LayerSelector()
    assert sel.matches("bert.encoder.layer.0.attention.self.query", "query")
    assert not sel.matches("classifier", "classifier")
    assert not sel.matches("bert.embeddings.word_embeddings", "embedding")
    assert not uc.LayerSelector(exclude=["*layer.0.*"]).matches("bert.encoder.layer.0.output.dense", "ffn_out")


def test_recipe_api_accepts_a_single_spec():
    from unicompress.api import as_recipe

    r = as_recipe(PruningSpec(sparsity=0.3))
    assert isinstance(r, Recipe) and r.stages[0].sparsity == 0.3
