"""Zoo checkpoints from TensorFlow: `unicompress.save_weights` then `unicompress.load_model`.

A tf_keras zoo model saved as a neutral safetensors checkpoint loads back into TensorFlow with identical
logits, loads into torch within 1e-4, and a model whose architecture changed (low-rank factors, TFMOT
quantize wrappers) is refused with an error that names the problem instead of writing a file that
would load wrongly.
"""
from __future__ import annotations

import numpy as np
import pytest

import unicompress as uc
from unicompress import zoo
from unicompress.backend import get_backend
from unicompress.backend.adapter import StageContext
from unicompress.backend.types import TaskData
from unicompress.specs import FineTuneSpec, LowRankSpec
from unicompress.zoo import checkpoint as zoo_checkpoint

A = get_backend("tensorflow")


def _inputs(zoo_name: str, cfg) -> dict:
    if zoo_name == "tiny-vit":
        return zoo.inputs_for(zoo_name, cfg, batch=3, seed=5)
    return zoo.inputs_for(zoo_name, cfg, batch=3, length=7, seed=5)


def _trained(zoo_name: str, num_labels: int):
    """A zoo model that is neither the seed-0 model nor untouched: seed 3, then two optimizer steps."""
    model = A.build_model(zoo_name, seed=3, num_labels=num_labels)
    cfg = zoo.config_for(zoo_name, num_labels)
    batch = [(_inputs(zoo_name, cfg), np.arange(3) % num_labels)]
    A.apply(model, FineTuneSpec(training={"steps": 2, "learning_rate": 0.05, "optimizer": "sgd", "batch_size": 3}),
            TaskData(train=lambda: iter(batch), num_labels=num_labels), StageContext())
    return model, cfg


@pytest.mark.parametrize("zoo_name", ["tiny-bert", "tiny-vit"])
def test_tensorflow_round_trip_gives_identical_logits(tmp_path, zoo_name):
    model, cfg = _trained(zoo_name, num_labels=4)
    path = uc.save_weights(model, tmp_path / f"{zoo_name}.safetensors", zoo=zoo_name)
    loaded = uc.load_model(path, backend="tensorflow")
    assert loaded is not model and len(loaded.layers) == len(model.layers)
    x = _inputs(zoo_name, cfg)
    before, after = A.run(model, x), A.run(loaded, x)
    assert before.shape == (3, 4)
    assert np.array_equal(before, after)
    fresh = A.run(A.build_model(zoo_name, seed=0, num_labels=4), x)
    assert np.abs(fresh - after).max() > 1e-3  # the file carried the trained weights, not the seed ones


@pytest.mark.slow  # imports torch beside TensorFlow (about 9 s)
def test_tensorflow_checkpoint_loads_into_torch(tmp_path):
    model, cfg = _trained("tiny-bert", num_labels=3)
    path = uc.save_weights(model, tmp_path / "tiny-bert.safetensors", zoo="tiny-bert", backend="tensorflow")
    torch_model = uc.load_model(path, backend="torch")
    x = _inputs("tiny-bert", cfg)
    tf_logits, torch_logits = A.run(model, x), get_backend("torch").run(torch_model, x)
    assert torch_logits.shape == (3, 3)
    assert np.abs(tf_logits - torch_logits).max() <= 1e-4


def test_changed_architecture_is_refused(tmp_path):
    model = A.build_model("tiny-bert", seed=0)
    factored = A.apply(A.copy(model), LowRankSpec(rank=4))
    from unicompress_tensorflow.models import FactorizedDense

    factors = [layer for layer in factored.layers if isinstance(layer, FactorizedDense)]
    assert factors and factors[0].first.name.endswith(".0")  # <name>.0 / <name>.1 factors
    target = tmp_path / "factored.safetensors"
    with pytest.raises(TypeError, match=r"FactorizedDense.*uncompressed zoo architecture only"):
        uc.save_weights(factored, target, zoo="tiny-bert")
    assert not target.exists()  # nothing half-written
    # the neutral names of the factors, saved by hand, are refused when read (a file from elsewhere)
    names = {f"{factors[0].name}.0.weight": np.zeros((4, 32), np.float32)}
    weights = {**A.neutral_weights(model), **names}
    weights.pop(f"{factors[0].name}.weight")
    with pytest.raises(ValueError, match=r"not have the 'tiny-bert' architecture.*missing.*unexpected"):
        zoo_checkpoint.save_checkpoint(weights, target, "tiny-bert")
    assert not target.exists()
