"""The one name fallback every backend uses (`role_from_name`, `block_from_name`), and how a structure overrides it."""
import numpy as np
import pytest

from unicompress import zoo
from unicompress.backend.types import AttentionInfo, FFNInfo, LayerInfo, TransformerStructure
from unicompress.specs.selector import LayerRole as R
from unicompress.structure import assign_roles, block_from_name, role_from_name
from unicompress.zoo.reference import bert_logits, logits, vit_logits

NAMES = {
    # Hugging Face BERT / the zoo (torch, TensorFlow, Paddle and ONNX exports keep these names)
    "bert.encoder.layer.0.attention.self.query": R.query,
    "bert.encoder.layer.0.attention.self.key": R.key,
    "bert.encoder.layer.0.attention.self.value": R.value,
    "bert.encoder.layer.0.attention.output.dense": R.attention_output,
    "bert.encoder.layer.0.intermediate.dense": R.ffn_in,
    "bert.encoder.layer.0.output.dense": R.ffn_out,
    "bert.pooler.dense": R.pooler,
    "classifier": R.classifier,
    "bert.embeddings.word_embeddings": R.embedding,
    "vit.embeddings.patch_embeddings": R.embedding,
    # RoBERTa's head: the classifier, not an attention output (the old torch table said attention_output)
    "classifier.out_proj": R.classifier,
    "lm_head": R.classifier,
    "score": R.classifier,
    # DistilBERT
    "distilbert.transformer.layer.1.attention.q_lin": R.query,
    "distilbert.transformer.layer.1.attention.out_lin": R.attention_output,
    "distilbert.transformer.layer.1.ffn.lin1": R.ffn_in,
    "distilbert.transformer.layer.1.ffn.lin2": R.ffn_out,
    # BART / Marian / Llama and Paddle's nn.TransformerEncoderLayer (self_attn.q_proj, linear1/linear2)
    "model.encoder.layers.0.self_attn.k_proj": R.key,
    "model.layers.0.self_attn.o_proj": R.attention_output,
    "model.decoder.layers.0.fc1": R.ffn_in,
    "encoder.layers.2.self_attn.v_proj": R.value,
    "encoder.layers.2.self_attn.out_proj": R.attention_output,
    "encoder.layers.2.linear1": R.ffn_in,
    "encoder.layers.2.linear2": R.ffn_out,
    # no rule: names that merely contain a rule's word
    "mlp.up": R.other,
    "my_query_cache": R.other,
    "heads": R.other,
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_role_from_name_gives_the_one_fallback_role(name):
    assert role_from_name(name) is NAMES[name]


def test_block_from_name_reads_every_family_numbering():
    got = {n: block_from_name(n) for n in ("bert.encoder.layer.3.output.dense", "encoder.layers.2.linear1",
                                           "blocks.1.attn.wq", "encoder.block.4.layer.0.SelfAttention.q",
                                           "transformer.h.5.mlp.c_fc", "layer.7", "classifier", "layer_norm.1")}
    assert got == {"bert.encoder.layer.3.output.dense": 3, "encoder.layers.2.linear1": 2, "blocks.1.attn.wq": 1,
                   "encoder.block.4.layer.0.SelfAttention.q": 4, "transformer.h.5.mlp.c_fc": 5, "layer.7": 7,
                   "classifier": None, "layer_norm.1": None}


def test_a_found_structure_overrides_the_name_fallback():
    """Names are only the fallback: a structure's roles win, and name-only Transformer roles outside it go."""
    names = ["emb", "blk.0.wq", "blk.0.wk", "blk.0.wv", "blk.0.wo", "blk.0.up", "blk.0.down", "x.q_proj", "out"]
    raw = [LayerInfo(n, "linear", role_from_name(n), (8, 8), block_from_name(n)) for n in names]
    assert [i.role for i in raw] == [R.other] * 7 + [R.query, R.other]
    st = TransformerStructure(8, 1, attention=(AttentionInfo(0, "blk.0.wq", "blk.0.wk", "blk.0.wv", "blk.0.wo", 2, 4),),
                              ffn=(FFNInfo(0, "blk.0.up", "blk.0.down"),))
    roles = {i.name: (i.role, i.block) for i in assign_roles(raw, st)}
    assert roles == {"emb": (R.other, None), "blk.0.wq": (R.query, 0), "blk.0.wk": (R.key, 0),
                     "blk.0.wv": (R.value, 0), "blk.0.wo": (R.attention_output, 0), "blk.0.up": (R.ffn_in, 0),
                     "blk.0.down": (R.ffn_out, 0), "x.q_proj": (R.other, None), "out": (R.classifier, None)}
    assert assign_roles(raw, None) == raw  # no structure: the name fallback stands


def test_zoo_reference_forward_is_the_documented_semantics():
    """The shared numpy forward: BERT ignores padded positions and its pooler/classifier are the last two Linears;
    ViT's logits are linear in the classifier (a zero classifier gives its bias)."""
    cfg = zoo.config_for("tiny-bert")
    w = zoo.weights_for("tiny-bert", cfg, seed=2)
    x = zoo.inputs_for("tiny-bert", cfg, batch=3, length=10)
    got = logits("tiny-bert", cfg, w, x)
    assert got.shape == (3, cfg.num_labels) and got.dtype == np.float64
    x2 = {k: v.copy() for k, v in x.items()}
    x2["input_ids"][x2["attention_mask"] == 0] = 5
    assert np.abs(bert_logits(cfg, w, x2) - got).max() < 1e-12
    assert np.abs(got).max() > 1e-4  # a real signal, not zeros
    vcfg = zoo.config_for("tiny-vit")
    vw = zoo.weights_for("tiny-vit", vcfg, seed=1)
    vw["classifier.weight"] = np.zeros_like(vw["classifier.weight"])
    vw["classifier.bias"] = np.arange(vcfg.num_labels, dtype=np.float32)
    vx = zoo.inputs_for("tiny-vit", vcfg, batch=2)
    assert np.array_equal(vit_logits(vcfg, vw, vx), np.tile(np.arange(vcfg.num_labels, dtype=np.float64), (2, 1)))
