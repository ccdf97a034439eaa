"""Structure discovery from layer types and configs on many Hugging Face families and torch's own modules."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from unicompress_torch_hf_testutil import build
from unicompress_torch_testutil import encoder_model

from unicompress import zoo
from unicompress.backend import get_backend
from unicompress.specs.selector import LayerRole, LayerSelector

A = get_backend("torch")

# family: (architecture, attention blocks, FFN pairs, (self, cross) counts, heads, kv heads, classifier, pooler,
#          packed, gated)
EXPECTED = {
    "bert": ("huggingface:bert", 2, 2, (2, 0), 4, None, "classifier", ("bert.pooler.dense",), False, False),
    "roberta": ("huggingface:roberta", 2, 2, (2, 0), 4, None, "classifier.out_proj", ("classifier.dense",), False,
                False),
    "xlm-roberta": ("huggingface:xlm-roberta", 2, 2, (2, 0), 4, None, "classifier.out_proj", ("classifier.dense",),
                    False, False),
    "distilbert": ("huggingface:distilbert", 2, 2, (2, 0), 4, None, "classifier", ("pre_classifier",), False, False),
    "albert": ("huggingface:albert", 1, 1, (1, 0), 4, None, "classifier", ("albert.pooler",), False, False),
    "electra": ("huggingface:electra", 2, 2, (2, 0), 4, None, "classifier.out_proj", ("classifier.dense",), False,
                False),
    "mpnet": ("huggingface:mpnet", 2, 2, (2, 0), 4, None, "classifier.out_proj", ("classifier.dense",), False,
              False),
    "deberta-v2": ("huggingface:deberta-v2", 2, 2, (2, 0), 4, None, "classifier", ("pooler.dense",), False, False),
    "vit": ("huggingface:vit", 2, 2, (2, 0), 4, None, "classifier", (), False, False),
    "deit": ("huggingface:deit", 2, 2, (2, 0), 4, None, "classifier", (), False, False),
    "gpt2": ("huggingface:gpt2", 2, 2, (2, 0), 4, None, "score", (), True, False),
    "llama": ("huggingface:llama", 2, 2, (2, 0), 4, 2, "score", (), False, True),
    "t5": ("huggingface:t5", 6, 4, (4, 2), 4, None, "classification_head.out_proj", ("classification_head.dense",),
           False, False),
    "t5-v1.1": ("huggingface:t5", 6, 4, (4, 2), 4, None, "classification_head.out_proj",
                ("classification_head.dense",), False, True),
    "bart": ("huggingface:bart", 6, 4, (4, 2), 4, None, "classification_head.out_proj", ("classification_head.dense",),
             False, False),
    "marian": ("huggingface:marian", 6, 4, (4, 2), 4, None, "lm_head", (), False, False),
    "whisper": ("huggingface:whisper", 6, 4, (4, 2), 4, None, "proj_out", (), False, False),
    "whisper-audio": ("huggingface:whisper", 2, 2, (2, 0), 4, None, "classifier", ("projector",), False, False),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_discovery_from_types_and_config(name):
    model, _ = build(name)
    arch, n_att, n_ffn, (n_self, n_cross), heads, kv, classifier, pooler, packed, gated = EXPECTED[name]
    s = A.structure(model)
    assert (s.architecture, s.source) == (arch, "discovered")
    assert (len(s.attention), len(s.ffn)) == (n_att, n_ffn)
    assert [a.kind for a in s.attention].count("self") == n_self
    assert [a.kind for a in s.attention].count("cross") == n_cross
    assert {(a.num_heads, a.head_dim, a.num_kv_heads) for a in s.attention} == {(heads, 8, kv)}
    assert (s.classifier, s.pooler, s.hidden_size) == (classifier, pooler, 32)
    assert all(a.packed == packed for a in s.attention)
    assert all((f.gate is not None) == gated for f in s.ffn)
    # blocks numbered in model order, encoder then decoder; a decoder block's self and cross share its number
    blocks = [a.block for a in s.attention if a.kind == "self"]
    assert blocks == list(range(s.num_layers)) == [f.block for f in s.ffn]
    # the widths the structure names are the layers' real widths
    shapes = {layer.name: layer.shape for layer in A.layers(model)}
    for a in s.attention:
        q_rows = shapes[a.query][0] // (3 if a.packed else 1)
        assert q_rows == a.num_heads * a.head_dim and shapes[a.output][1] == q_rows
        assert shapes[a.key][0] // (3 if a.packed else 1) == a.kv_heads * a.head_dim
    for f in s.ffn:
        assert shapes[f.ffn_in][0] == shapes[f.ffn_out][1] == 64
        assert shapes[f.ffn_in][1] == shapes[f.ffn_out][0] == 32


@pytest.mark.parametrize("name", ["roberta", "mpnet", "gpt2", "t5", "llama", "bart"])
def test_roles_come_from_the_structure_and_skip_the_head(name):
    """`layers()` and `describe()` give the structure's roles; the default selector never takes the head."""
    model, _ = build(name)
    s = A.structure(model)
    roles = {layer.name: layer.role for layer in A.layers(model)}
    assert roles[s.classifier] is LayerRole.classifier
    assert all(roles[p] is LayerRole.pooler for p in s.pooler)
    for a in s.attention:
        if a.packed:
            assert roles[a.query] is LayerRole.qkv
        else:
            assert (roles[a.query], roles[a.key], roles[a.value]) == (LayerRole.query, LayerRole.key, LayerRole.value)
        assert roles[a.output] is LayerRole.attention_output
    for f in s.ffn:
        assert (roles[f.ffn_in], roles[f.ffn_out]) == (LayerRole.ffn_in, LayerRole.ffn_out)
        if f.gate:
            assert roles[f.gate] is LayerRole.ffn_gate
    assert {r.name: r.role for r in A.describe(model)} == {n: r.value for n, r in roles.items()}
    chosen = {layer.name for layer in LayerSelector().select(A.layers(model))}
    assert s.classifier not in chosen and not chosen & set(s.pooler)
    in_blocks = {n for a in s.attention for n in a.layers} | {n for f in s.ffn for n in f.layers}
    assert in_blocks <= chosen


def test_roberta_out_proj_is_the_classifier_not_an_attention_output():
    model, _ = build("roberta")
    layers = {layer.name: layer for layer in A.layers(model)}
    assert layers["classifier.out_proj"].role is LayerRole.classifier  # its name looks like an attention output
    assert layers["classifier.dense"].role is LayerRole.pooler
    assert layers["roberta.encoder.layer.1.attention.output.dense"].block == 1


def test_mpnet_names_are_found_by_type():
    """The user report: MPNet's attention.attn.q/k/v/o and its FFN pair, which no BERT name pattern matches."""
    model, _ = build("mpnet")
    s = A.structure(model)
    p = "mpnet.encoder.layer.1"
    assert s.attention[1].layers == (f"{p}.attention.attn.q", f"{p}.attention.attn.k", f"{p}.attention.attn.v",
                                     f"{p}.attention.attn.o")
    assert (s.ffn[1].ffn_in, s.ffn[1].ffn_out) == (f"{p}.intermediate.dense", f"{p}.output.dense")
    assert all(a.removable for a in s.attention) and all(f.removable for f in s.ffn)


def test_albert_shared_blocks_are_not_removable():
    model, _ = build("albert")
    s = A.structure(model)
    assert s.shared_blocks and s.num_layers == 1
    units = list(s.attention) + list(s.ffn)
    assert not any(u.removable for u in units)
    assert all("pruning one block prunes all" in u.note for u in units)
    roles = {layer.name: layer.role for layer in A.layers(model)}
    assert roles["albert.encoder.embedding_hidden_mapping_in"] is LayerRole.other  # before the blocks: no head


def test_t5_blocks_self_and_cross_attention():
    model, _ = build("t5")
    s = A.structure(model)
    dec = [a for a in s.attention if a.block == 3]
    assert [a.kind for a in dec] == ["self", "cross"]
    assert dec[1].query == "transformer.decoder.block.1.layer.1.EncDecAttention.q"
    assert s.ffn[3].ffn_in == "transformer.decoder.block.1.layer.2.DenseReluDense.wi"
    blocks = {layer.name: layer.block for layer in A.layers(model)}
    assert blocks["transformer.decoder.block.0.layer.2.DenseReluDense.wo"] == 2
    gated = A.structure(build("t5-v1.1")[0]).ffn[0]
    assert gated.gate.endswith("wi_0") and gated.ffn_in.endswith("wi_1")


def test_gpt2_conv1d_is_a_linear_in_the_neutral_layout():
    model, _ = build("gpt2")
    layers = {layer.name: layer for layer in A.layers(model)}
    c_attn = layers["transformer.h.0.attn.c_attn"]
    assert (c_attn.kind, c_attn.role, c_attn.shape) == ("linear", LayerRole.qkv, (96, 32))
    w = A.weights(model, [c_attn.name])[c_attn.name]
    raw = model.transformer.h[0].attn.c_attn.weight.detach().numpy()  # Conv1D stores [in, out]
    np.testing.assert_array_equal(w, raw.T)
    A.set_weights(model, {c_attn.name: np.arange(w.size, dtype=np.float32).reshape(w.shape)})
    np.testing.assert_array_equal(model.transformer.h[0].attn.c_attn.weight.detach().numpy().T,
                                  np.arange(w.size, dtype=np.float32).reshape(w.shape))
    assert {s.name: s.shape for s in A.describe(model)}[c_attn.name] == (96, 32)


def test_torch_transformer_encoder_decoder_and_bare_attention():
    torch.manual_seed(0)

    class Seq2Seq(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.decoder = torch.nn.TransformerDecoder(
                torch.nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True), 2)
            self.head = torch.nn.Linear(16, 5)

    s = A.structure(Seq2Seq())
    assert s.architecture == "torch:Transformer"
    assert [(a.block, a.kind) for a in s.attention] == [(0, "self"), (1, "self"), (2, "self"), (2, "cross"),
                                                         (3, "self"), (3, "cross")]
    assert s.attention[3].query == "decoder.layers.0.multihead_attn.in_proj" and s.attention[3].packed
    assert [f.ffn_in for f in s.ffn][2:] == ["decoder.layers.0.linear1", "decoder.layers.1.linear1"]
    assert s.classifier == "head" and not any(a.removable for a in s.attention)
    assert all("nn.MultiheadAttention" in a.note for a in s.attention)
    mha = A.structure(torch.nn.MultiheadAttention(16, 4))
    assert [(a.query, a.output, a.num_heads, a.head_dim) for a in mha.attention] == [("in_proj", "out_proj", 4, 4)]
    enc = A.structure(encoder_model())
    assert enc.architecture == "torch:TransformerEncoderLayer" and enc.classifier == "classifier"


def test_zoo_models_keep_their_structure():
    for name, arch in (("tiny-bert", "huggingface:bert"), ("tiny-vit", "unicompress:tiny-vit")):
        from unicompress_torch.models import build_model

        s = A.structure(build_model(name))
        assert (s.architecture, len(s.attention), s.attention[0].num_heads) == (arch, 2, 4)
        assert all(a.removable for a in s.attention)


def test_user_encoder_is_an_hf_mpnet():
    from unicompress_torch.models import build_model

    model = build_model("user-encoder", seed=0, num_labels=3)
    assert type(model).__name__ == "MPNetForSequenceClassification"
    cfg = zoo.config_for("tiny-bert")
    x = zoo.inputs_for("tiny-bert", cfg)
    out = A.run(model, x)
    assert out.shape == (4, 3) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, A.run(build_model("user-encoder", seed=0, num_labels=3), x))
    assert not np.allclose(out, A.run(build_model("user-encoder", seed=1, num_labels=3), x))
    s = A.structure(model)
    assert (s.architecture, s.num_layers, s.hidden_size, s.classifier) == ("huggingface:mpnet", 2, 32,
                                                                           "classifier.out_proj")
    assert model.config.vocab_size == cfg.vocab_size
    with pytest.raises(ValueError, match="weights="):
        build_model("user-encoder", weights={})


def test_an_attention_class_with_unnamed_projections_is_read_in_order():
    class MyAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.num_heads = 2
            self.p1, self.p2, self.p3, self.p4 = (torch.nn.Linear(8, 8) for _ in range(4))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.ModuleDict({"att": MyAttention(), "up": torch.nn.Linear(8, 16),
                                                                   "down": torch.nn.Linear(16, 8)}) for _ in range(2))
            self.out = torch.nn.Linear(8, 2)

    s = A.structure(Net())
    assert [(a.query, a.key, a.value, a.output, a.num_heads) for a in s.attention] == [
        (f"layers.{i}.att.p1", f"layers.{i}.att.p2", f"layers.{i}.att.p3", f"layers.{i}.att.p4", 2) for i in range(2)]
    assert [(f.ffn_in, f.ffn_out) for f in s.ffn] == [(f"layers.{i}.up", f"layers.{i}.down") for i in range(2)]
    assert s.classifier == "out" and s.architecture == "torch:Net"
