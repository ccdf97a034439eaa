"""The example recipes: each validates, says what its file name promises, runs on any backend by changing
only `backend:`, shrinks to a smoke recipe; and which installed backend can run which example today."""
import sys
from pathlib import Path

import pytest

import unicompress as uc
from unicompress.specs import Granularity, QuantMode
from unicompress.zoo import config_for

ROOT = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(ROOT / "examples"))  # a folder of scripts, not a package
import run_example as runner  # noqa: E402
PATHS = runner.example_paths()
MINILM_PATHS = [p for p in PATHS if p.name != "vit_mnist.yaml"]  # the text path; vit_mnist.yaml is the image path


def test_every_example_file_exists_and_is_documented():
    readme = (ROOT / "examples" / "README.md").read_text()
    assert sorted(p.name for p in (ROOT / "examples").glob("*.yaml")) == sorted(runner.EXAMPLE_FILES)
    for path in PATHS:
        assert path.name in readme


@pytest.mark.parametrize("path", MINILM_PATHS, ids=lambda p: p.stem)
def test_example_validates_and_starts_from_the_finetuned_minilm(path):
    recipe = uc.load_recipe(path)
    assert recipe.backend == "torch"
    assert recipe.model.zoo == "minilm-l6" and recipe.model.kwargs == {"num_labels": 5}
    assert recipe.model.weights == "examples/.cache/minilm-l6-bbc-news-{backend}.safetensors"
    assert recipe.model.weights_for("paddle") == "examples/.cache/minilm-l6-bbc-news-paddle.safetensors"
    assert recipe.data.dataset == "bbc-news" and recipe.data.kwargs["max_length"] == 128
    assert recipe.export.directory == f"examples/out/{path.stem}"


def test_image_example_starts_from_the_vit_trained_on_mnist():
    recipe = uc.load_recipe(ROOT / "examples" / "vit_mnist.yaml")
    assert recipe.backend == "torch" and recipe.model.zoo == "tiny-vit" and recipe.model.kwargs == {"num_labels": 10}
    assert recipe.model.weights_for("tensorflow") == "examples/.cache/tiny-vit-mnist-tensorflow.safetensors"
    assert runner.train_vit_mnist.backend_of_checkpoint(ROOT / recipe.model.weights_for("paddle")) == "paddle"
    assert runner.finetune_minilm.backend_of_checkpoint(ROOT / recipe.model.weights_for("paddle")) is None
    assert recipe.data.dataset == "mnist-5k" and recipe.export.directory == "examples/out/vit_mnist"
    assert [s.technique for s in recipe.stages] == ["pruning", "finetune", "quantization"]
    assert recipe.stages[0].granularity is Granularity.neuron and recipe.stages[2].mode is QuantMode.static


@pytest.mark.parametrize("backend", ["torch", "tensorflow", "paddle"])
@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_only_the_backend_changes(path, backend):
    base = uc.load_recipe(path)
    moved = runner.load_example(path, backend=backend)
    assert moved.backend == backend
    assert moved.model_dump(exclude={"backend"}) == base.model_dump(exclude={"backend"})


def _stages(name):
    return uc.load_recipe(ROOT / "examples" / name).stages


def test_each_example_is_the_scenario_it_names():
    (q,) = _stages("int8_static.yaml")
    assert (q.mode, q.bits, q.activation_bits, q.granularity.value) == (QuantMode.static, 8, 8, "per_channel")
    prune, ft = _stages("sparsity_2of4.yaml")
    assert (prune.granularity, prune.n, prune.m, ft.technique) == (Granularity.n_m, 2, 4, "finetune")
    heads, neurons, ft = _stages("prune_heads_ffn.yaml")
    assert (heads.granularity, heads.sparsity, heads.remove_pruned) == (Granularity.head, 0.5, True)
    assert (neurons.granularity, neurons.sparsity, neurons.remove_pruned) == (Granularity.neuron, 0.5, True)
    assert ft.technique == "finetune"
    (d,) = _stages("distill_6to3.yaml")
    assert d.student.num_layers == 3 and config_for("minilm-l6").num_hidden_layers == 6
    lr, ft = _stages("low_rank.yaml")
    assert lr.technique == "low_rank" and lr.rank == 128 and ft.technique == "finetune"
    assert [s.technique for s in _stages("distill_prune_quantize.yaml")] == \
        ["distillation", "pruning", "finetune", "quantization"]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_smoke_version_is_tiny_and_valid(path):
    recipe = runner.load_example(path, smoke=True)
    if path.name == "vit_mnist.yaml":  # the image path keeps its (untrained) tiny-vit and takes a few digits
        assert recipe.model.zoo == "tiny-vit" and recipe.model.weights is None
        assert recipe.data.kwargs["max_train"] == 64 and recipe.data.kwargs["max_eval"] == 32
    else:
        assert recipe.model.zoo == "tiny-bert" and recipe.model.weights is None
        assert recipe.data.kwargs["vocab_size"] == 128 and recipe.data.kwargs["max_length"] == 32
    for stage in recipe.stages:
        training = getattr(stage, "training", None)
        assert training is None or training.steps <= runner.SMOKE_STEPS
        if stage.technique == "distillation":
            assert stage.student.num_layers == 1  # tiny-bert has 2 layers
    assert [s.technique for s in recipe.stages] == [s.technique for s in uc.load_recipe(path).stages]


def test_support_matrix_of_installed_backends():
    from unicompress.backend import available_backends

    matrix = runner.support_matrix()
    assert set(matrix) == set(runner.EXAMPLE_FILES)
    installed = set(available_backends())
    for example, per_backend in matrix.items():
        assert set(per_backend) == {"torch", "tensorflow", "paddle"}
        for backend, problems in per_backend.items():
            assert all(isinstance(p, str) for p in problems)
            if backend not in installed:
                assert problems and "not installed" in problems[0]
    print("\n" + runner.matrix_markdown(matrix))  # shown with -s: which example runs where today


def test_headline_example_runs_on_the_default_backend():
    from unicompress.backend import available_backends

    if "torch" not in available_backends():
        pytest.skip("the torch adapter is not installed")
    assert runner.support_matrix([ROOT / "examples" / "int8_static.yaml"], ("torch",)) == \
        {"int8_static.yaml": {"torch": []}}


def test_cli_validates_every_example(capsys):
    from unicompress.cli import main

    assert main(["validate", *map(str, PATHS)]) == 0
    assert capsys.readouterr().out.count(": ok (") == len(PATHS)
