"""Fuzz the loader: whatever the input, nothing but SpecValidationError may escape."""
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unicompress.errors import SpecValidationError
from unicompress.recipe_io import dump_text, load_recipe

KEYS = ["technique", "sparsity", "granularity", "n", "m", "bits", "mode", "scheme", "stages", "backend", "kinds",
        "rank", "energy", "schedule", "selector", "include", "training", "steps", "calibration", "method",
        "overrides", "pattern", "student", "keep_layers", "layer_map", "block_shape", "export", "formats", "name"]
VALUES = ["pruning", "quantization", "distillation", "low_rank", "finetune", "n_m", "head", "block", "static",
          "qat", "log", "polynomial", "symmetric", "global", "torch", "auto"]

scalars = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | st.sampled_from(VALUES))
json_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5),
                         max_leaves=25)


def _only_our_error(call):
    try:
        call()
    except SpecValidationError as exc:
        assert exc.problems, "a validation error must list its problems"
        for p in exc.problems:
            assert str(p)  # every problem renders


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_like)
def test_any_data_gives_only_validation_errors(data):
    _only_our_error(lambda: load_recipe(data) if isinstance(data, dict) else load_recipe({"stages": data}))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_only_validation_errors(text):
    _only_our_error(lambda: load_recipe(text + "\n"))


stage = st.one_of(
    st.builds(dict, technique=st.just("pruning"), sparsity=st.floats(0, 0.99),
              granularity=st.sampled_from(["unstructured", "neuron", "head"])),
    st.builds(dict, technique=st.just("pruning"), granularity=st.just("n_m"),
              m=st.integers(2, 16)).flatmap(lambda d: st.integers(1, d["m"] - 1).map(lambda n: {**d, "n": n})),
    st.builds(dict, technique=st.just("quantization"), bits=st.integers(2, 16),
              mode=st.sampled_from(["static", "dynamic", "weight_only"]),
              scheme=st.sampled_from(["symmetric", "asymmetric"])),
    st.builds(dict, technique=st.just("low_rank"), rank=st.integers(1, 512)),
    st.builds(dict, technique=st.just("distillation"), temperature=st.floats(0.1, 20),
              kinds=st.lists(st.sampled_from(["response", "feature", "relation"]), min_size=1, max_size=3,
                             unique=True)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(stage, min_size=1, max_size=4), st.sampled_from(["yaml", "json"]))
def test_valid_recipes_round_trip_exactly(stages, fmt):
    stages = [s for s in stages if s["technique"] != "quantization"] + \
             [s for s in stages if s["technique"] == "quantization"][:1]
    recipe = load_recipe({"name": "fuzz", "stages": stages})
    text = dump_text(recipe, fmt)
    assert load_recipe(text if fmt == "yaml" else json.loads(text)) == recipe
