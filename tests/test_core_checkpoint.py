"""Zoo checkpoints: neutral safetensors with the zoo name in the metadata; `{backend}` in recipe weights."""
import numpy as np
import pytest

from unicompress import zoo
from unicompress.errors import SpecValidationError
from unicompress.recipe_io import load_recipe
from unicompress.zoo.checkpoint import config_from_weights, read_checkpoint, save_checkpoint


def test_checkpoint_round_trip_keeps_names_values_and_config(tmp_path):
    cfg = zoo.config_for("tiny-bert", 7)
    weights = zoo.weights_for("tiny-bert", cfg, seed=2)
    path = save_checkpoint(weights, tmp_path / "m.safetensors", "tiny-bert")
    got = read_checkpoint(path)
    assert got.zoo == "tiny-bert" and got.config == cfg and got.config.num_labels == 7
    assert set(got.weights) == set(weights)
    assert all(np.array_equal(got.weights[k], weights[k]) for k in weights)
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically, no leftovers


def test_vit_checkpoints_work_too(tmp_path):
    cfg = zoo.config_for("tiny-vit")
    weights = zoo.weights_for("tiny-vit", cfg)
    assert read_checkpoint(save_checkpoint(weights, tmp_path / "v.safetensors", "tiny-vit")).config == cfg


def test_a_model_of_another_shape_is_refused_with_the_names(tmp_path):
    cfg = zoo.config_for("tiny-bert")
    weights = zoo.weights_for("tiny-bert", cfg)
    weights["bert.encoder.layer.0.intermediate.dense.weight"] = np.zeros((10, cfg.hidden_size), np.float32)
    del weights["bert.encoder.layer.1.output.dense.bias"]
    with pytest.raises(ValueError, match=r"missing: bert.encoder.layer.1.output.dense.bias.*wrong shape: "
                                         r"bert.encoder.layer.0.intermediate.dense.weight.*export_native"):
        save_checkpoint(weights, tmp_path / "x.safetensors", "tiny-bert")
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(ValueError, match="lack classifier.weight"):
        config_from_weights("tiny-bert", {})


def test_a_file_without_zoo_metadata_needs_the_zoo_name(tmp_path):
    cfg = zoo.config_for("tiny-bert")
    path = zoo.bert.save_safetensors(zoo.weights_for("tiny-bert", cfg), tmp_path / "old.safetensors", cfg)
    with pytest.raises(ValueError, match="pass zoo_name"):
        read_checkpoint(path)
    assert read_checkpoint(path, "tiny-bert").config == cfg


RECIPE = """
name: r
backend: paddle
model: {zoo: tiny-bert, weights: "%s"}
stages: [{technique: low_rank, rank: 2}]
"""


def test_backend_placeholder_in_weights_is_filled_per_backend():
    recipe = load_recipe(RECIPE % "ckpt/m-{backend}.safetensors")
    assert recipe.model.weights_for("tensorflow") == "ckpt/m-tensorflow.safetensors"
    assert load_recipe(RECIPE % "plain.safetensors").model.weights_for("torch") == "plain.safetensors"


def test_other_placeholders_are_refused_naming_the_field():
    with pytest.raises(SpecValidationError, match=r"model.*only placeholder allowed is \{backend\}"):
        load_recipe(RECIPE % "m-{framework}.safetensors")
