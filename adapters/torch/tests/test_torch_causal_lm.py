"""The causal-lm task on torch: a tiny Llama's perplexity through compress() equals Hugging Face's own loss, int8
weight-only keeps it, the tied lm_head stays tied, and mismatched task/model pairs are refused before work."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import unicompress as uc  # noqa: E402
from unicompress.data.lm import build_lm_data  # noqa: E402
from unicompress.errors import InvalidDataError, StageError  # noqa: E402
from unicompress.specs import FineTuneSpec, QuantizationSpec  # noqa: E402

WORDS = ["in", "the", "beginning", "god", "created", "heaven", "and", "earth", "was", "without", "form", "void",
         "light", "darkness", "said", "let", "there", "be", "day", "night"]
VOCAB = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *WORDS])}
#: the Llama Linears weight-only quantizes by default (lm_head and the embedding stay float)
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def _corpus(n=80, seed=0):
    """Documents of a small Markov chain over WORDS: learnable structure, so training lowers perplexity."""
    rng = np.random.default_rng(seed)
    nxt = {w: rng.choice(WORDS, size=3, replace=False) for w in WORDS}
    docs = []
    for _ in range(n):
        w = rng.choice(WORDS)
        words = [w]
        for _ in range(int(rng.integers(6, 14))):
            w = rng.choice(nxt[w])
            words.append(w)
        docs.append(" ".join(words))
    return docs


def _data(**kw):
    return build_lm_data(_corpus(), tokenizer=_tokenizer(), max_length=16, split={"test": 0.25}, batch_size=4,
                         eval_batch_size=3, **kw)


def _llama(seed=0, tie=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, vocab_size=len(VOCAB), max_position_embeddings=64,
                      tie_word_embeddings=tie, pad_token_id=0, bos_token_id=None, eos_token_id=None)
    return LlamaForCausalLM(cfg).eval()


def _hf_perplexity(model, data):
    """exp of Hugging Face's own causal LM loss over every test block at once (all blocks are full)."""
    ids = torch.from_numpy(data.blocks["test"].input_ids)
    with torch.no_grad():
        return math.exp(model(input_ids=ids, labels=ids).loss.item())


def _int8():
    return QuantizationSpec(mode="weight_only", bits=8, granularity="per_channel")


def test_weight_only_int8_perplexity_equals_hf_loss_and_keeps_the_tie():
    data, model = _data(), _llama()
    result = uc.compress(model, _int8(), data, backend="torch", progress=False)
    before, after = result.report.metrics_before, result.report.metrics_after
    assert set(before) == {"perplexity", "nll", "tokens"}
    assert before["tokens"] == len(data.blocks["test"]) * 15  # 15 predicted tokens per 16-token block
    assert before["perplexity"] == pytest.approx(_hf_perplexity(model, data), rel=1e-4)
    # random weights: perplexity near the vocabulary size; int8 per-channel moves it by far less than 0.5%
    assert 10 < before["perplexity"] < 40 and abs(after["perplexity"] / before["perplexity"] - 1) < 5e-3
    assert after["perplexity"] == pytest.approx(_hf_perplexity(result.model, data), rel=1e-4)
    bits = {s.name: s.bits for s in result.report.layers_after}
    quantized = sorted(n for n, b in bits.items() if b == 8)
    assert quantized == sorted(f"model.layers.{i}.{p}.{c}" for i in range(2)
                               for p, c in [("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"),
                                            ("self_attn", "o_proj"), ("mlp", "gate_proj"), ("mlp", "up_proj"),
                                            ("mlp", "down_proj")])
    assert bits["lm_head"] == 32 and bits["model.embed_tokens"] == 32
    q = result.model
    assert q.lm_head.weight is q.model.embed_tokens.weight  # the tied head is left in float, still tied
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32  # the input model is untouched


def test_finetune_on_blocks_lowers_perplexity_then_int4_stays_close():
    data, model = _data(), _llama()
    tuned = uc.compress(model, FineTuneSpec(training={"steps": 60, "learning_rate": 3e-3, "batch_size": 4}),
                        data, backend="torch", progress=False)
    before, after = tuned.report.metrics_before["perplexity"], tuned.report.metrics_after["perplexity"]
    assert after < 0.6 * before  # the shifted causal LM loss trains: the chain's 3 successors are learnt
    int4 = uc.compress(tuned.model, QuantizationSpec(mode="weight_only", bits=4), data, backend="torch",
                       progress=False)
    assert int4.report.metrics_after["perplexity"] < 1.15 * after


def test_quantizing_a_tied_lm_head_is_refused_not_untied():
    roles = ["query", "key", "value", "attention_output", "ffn_gate", "ffn_in", "ffn_out", "classifier"]
    spec = QuantizationSpec(mode="weight_only", bits=8, selector={"roles": roles})
    with pytest.raises(StageError, match=r"lm_head.weight is tied to model.embed_tokens.weight"):
        uc.compress(_llama(), spec, _data(), backend="torch", progress=False)
    untied = uc.compress(_llama(tie=False), spec, _data(), backend="torch", progress=False)
    assert {s.name: s.bits for s in untied.report.layers_after}["lm_head"] == 8


def test_causal_lm_data_on_a_classifier_is_refused_before_work():
    from unicompress.backend.registry import get_backend

    bert = get_backend("torch").build_model("tiny-bert", num_labels=3)
    with pytest.raises(InvalidDataError, match=r"data.task is 'causal-lm'.*not \[batch, seq, vocab\]"):
        uc.compress(bert, _int8(), _data(), backend="torch", progress=False)


def test_classification_data_on_a_causal_lm_is_refused_before_work():
    data = _data()
    x, _ = next(iter(data.evaluation()))
    labels = np.zeros(len(x["input_ids"]), np.int64)
    classification = uc.TaskData(evaluation=lambda: iter([(x, labels)]), num_labels=2)
    with pytest.raises(InvalidDataError, match=r"data.task is 'classification'.*task: causal-lm"):
        uc.compress(_llama(), _int8(), classification, backend="torch", progress=False)
    # calibration only (nothing reads the labels): a causal LM may take plain inputs
    calib = uc.TaskData(calibration=lambda: iter([x]))
    result = uc.compress(_llama(), _int8(), calib, backend="torch", progress=False)
    assert result.report.metrics_after == {}


def test_run_returns_token_logits_of_the_causal_lm():
    from unicompress.backend.registry import get_backend

    data, model = _data(), _llama()
    x, _ = next(iter(data.evaluation()))
    logits = get_backend("torch").run(model, x)
    assert logits.shape == (3, 16, len(VOCAB)) and logits.dtype == np.float32
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in x.items()}).logits.numpy()
    assert np.abs(logits - want).max() < 1e-5


def tiny_llama(backend="torch", seed=0):
    """The recipe factory of the CLI test: the tiny Llama over VOCAB."""
    assert backend == "torch"
    return _llama(seed)


def test_cli_runs_a_causal_lm_recipe_from_a_text_file(tmp_path, monkeypatch):
    import json

    from unicompress.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("\n".join(_corpus()) + "\n", encoding="utf-8")
    (tmp_path / "tok").mkdir()
    _tokenizer().save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]", "unk_token": "[UNK]"}))
    (tmp_path / "lm.yaml").write_text(
        "name: tiny-lm-int8\nbackend: torch\nmodel: {factory: 'test_torch_causal_lm:tiny_llama'}\n"
        "data: {path: corpus.txt, task: causal-lm, tokenizer: tok, max_length: 16, split: {test: 0.25}}\n"
        "stages:\n  - {technique: quantization, mode: weight_only, bits: 8}\n")
    assert main(["run", "lm.yaml", "--out", "rep", "--no-progress", "--allow-factory", "test_torch_causal_lm"]) == 0
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    data = build_lm_data(_corpus(), tokenizer=_tokenizer(), max_length=16, split={"test": 0.25})
    assert report["metrics_before"]["perplexity"] == pytest.approx(_hf_perplexity(_llama(), data), rel=1e-4)
    assert report["metrics_before"]["tokens"] == report["metrics_after"]["tokens"] == 13 * 15
