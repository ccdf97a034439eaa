"""Zoo checkpoints on Paddle: `unicompress.save_weights` / `unicompress.load_model` round trips.

A Paddle model saved and loaded back gives the same logits bit for bit; a checkpoint written from a torch
model loads into Paddle with logits within 1e-4 of torch's (Paddle is imported first, so torch and Paddle
share this process safely: only TensorFlow before Paddle crashes); models whose shapes changed are refused.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from unicompress_paddle.compat import paddle  # noqa: F401  (Paddle before any other framework)

import unicompress as uc
from unicompress import zoo
from unicompress.backend import get_backend
from unicompress.backend.adapter import StageContext
from unicompress.specs import LowRankSpec, PruningSpec

A = get_backend("paddle")


def _inputs(name: str) -> dict:
    return zoo.inputs_for(name, zoo.config_for(name), batch=3, **({} if name == "tiny-vit" else {"length": 7}))


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-vit"])
def test_save_then_load_gives_identical_logits(tmp_path, name):
    model = A.build_model(name, seed=3, num_labels=4)  # not the default seed nor label count
    path = uc.save_weights(model, tmp_path / f"{name}.safetensors", zoo=name)
    loaded = uc.load_model(path, backend="paddle")
    assert type(loaded) is type(model) and loaded.config.num_labels == 4
    x = _inputs(name)
    before, after = A.run(model, x), A.run(loaded, x)
    assert before.shape == (3, 4)
    assert np.array_equal(before, after)
    saved, back = A.neutral_weights(model), A.neutral_weights(loaded)
    assert saved.keys() == back.keys() and all(np.array_equal(saved[k], back[k]) for k in saved)


# tiny-bert imports transformers on the torch side (about 5 s here): slow; tiny-vit pays only torch's import
@pytest.mark.parametrize("name", [pytest.param("tiny-bert", marks=pytest.mark.slow), "tiny-vit"])
def test_checkpoint_saved_from_torch_loads_into_paddle(tmp_path, name):
    pytest.importorskip("unicompress_torch")
    T = get_backend("torch")
    source = T.build_model(name, seed=5)
    path = uc.save_weights(source, tmp_path / "from-torch.safetensors", zoo=name)
    loaded = uc.load_model(path, backend="paddle")
    x = _inputs(name)
    expected, got = T.run(source, x), A.run(loaded, x)
    assert np.abs(expected - got).max() <= 1e-4
    # and it is the torch model's weights, not the zoo default's
    assert np.abs(A.run(A.build_model(name, seed=0), x) - got).max() > 1e-3


def test_factorized_model_is_refused_on_save(tmp_path):
    model = A.apply(A.build_model("tiny-bert", seed=0), LowRankSpec(rank=4), None, StageContext())
    target = tmp_path / "factorized.safetensors"
    with pytest.raises(ValueError, match=r"does not have the 'tiny-bert' architecture \(missing: .*unexpected: "
                                         r".*first.*export_native"):
        uc.save_weights(model, target, zoo="tiny-bert")
    assert not target.exists()  # refused before anything was written


def test_head_pruned_model_is_refused_on_save(tmp_path):
    pruned = A.apply(A.build_model("tiny-bert", seed=0), PruningSpec(sparsity=0.5, granularity="head",
                                                                    remove_pruned=True), None, StageContext())
    with pytest.raises(ValueError, match=r"wrong shape: .*attention\.self\.key\.weight.*pruned heads"):
        uc.save_weights(pruned, tmp_path / "pruned.safetensors", zoo="tiny-bert")


def test_checkpoint_with_a_changed_shape_is_refused_on_load(tmp_path):
    from safetensors.numpy import save

    weights = A.neutral_weights(A.build_model("tiny-bert", seed=0))
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    weights[name] = weights[name][: weights[name].shape[0] // 2]  # FFN neurons removed
    path = tmp_path / "shrunk.safetensors"
    path.write_bytes(save(weights, metadata={"unicompress_zoo": "tiny-bert", "unicompress_config": json.dumps({})}))
    with pytest.raises(ValueError, match=r"wrong shape: bert\.encoder\.layer\.0\.intermediate\.dense\.weight"):
        uc.load_model(path, backend="paddle")
