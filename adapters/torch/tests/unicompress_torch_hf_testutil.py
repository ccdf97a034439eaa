"""Tiny Hugging Face models of many families, built from configs (random weights, no download), and inputs.

Each `build(name)` gives (model in eval mode, example inputs as numpy). Sizes: hidden 32, 2 layers (2 + 2 for
encoder-decoders), 4 heads of 8, FFN 64, vocabulary 100. Dropout is off so masked and removed runs compare.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

torch.set_num_threads(1)

_NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100,
             **_NO_DROPOUT)
_SEQ2SEQ = dict(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.0,
                attention_dropout=0.0, activation_dropout=0.0)
_IMAGE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16,
              patch_size=8, num_channels=3, **_NO_DROPOUT)


def _config(name: str):
    import transformers as T

    return {
        "bert": lambda: (T.BertForSequenceClassification, T.BertConfig(**_TEXT)),
        "roberta": lambda: (T.RobertaForSequenceClassification, T.RobertaConfig(**_TEXT, pad_token_id=1)),
        "xlm-roberta": lambda: (T.XLMRobertaForSequenceClassification, T.XLMRobertaConfig(**_TEXT, pad_token_id=1)),
        "distilbert": lambda: (T.DistilBertForSequenceClassification, T.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, dropout=0.0, attention_dropout=0.0,
            seq_classif_dropout=0.0)),
        "albert": lambda: (T.AlbertForSequenceClassification, T.AlbertConfig(embedding_size=16, **_TEXT,
                                                                                 classifier_dropout_prob=0.0)),
        "electra": lambda: (T.ElectraForSequenceClassification, T.ElectraConfig(embedding_size=16, **_TEXT)),
        "mpnet": lambda: (T.MPNetForSequenceClassification, T.MPNetConfig(**_TEXT, pad_token_id=0)),
        "deberta-v2": lambda: (T.DebertaV2ForSequenceClassification, T.DebertaV2Config(**_TEXT)),
        "deberta-v2-relative": lambda: (T.DebertaV2ForSequenceClassification, T.DebertaV2Config(
            **_TEXT, relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=16,
            position_buckets=8, share_att_key=False)),
        "vit": lambda: (T.ViTForImageClassification, T.ViTConfig(**_IMAGE)),
        "deit": lambda: (T.DeiTForImageClassification, T.DeiTConfig(**_IMAGE)),
        "gpt2": lambda: (T.GPT2ForSequenceClassification, T.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_inner=64, vocab_size=100, pad_token_id=0, bos_token_id=1,
            eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
        "llama": lambda: (T.LlamaForSequenceClassification, T.LlamaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
            vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
        "t5": lambda: (T.T5ForSequenceClassification, T.T5Config(
            vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)),
        "t5-v1.1": lambda: (T.T5ForSequenceClassification, T.T5Config(
            vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
            feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)),
        "bart": lambda: (T.BartForSequenceClassification, T.BartConfig(
            **_SEQ2SEQ, max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            classifier_dropout=0.0)),
        "marian": lambda: (T.MarianMTModel, T.MarianConfig(
            **_SEQ2SEQ, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)),
        "whisper": lambda: (T.WhisperForConditionalGeneration, T.WhisperConfig(
            **_SEQ2SEQ, num_mel_bins=8, max_source_positions=16, max_target_positions=16, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)),
        "whisper-audio": lambda: (T.WhisperForAudioClassification, T.WhisperConfig(
            **_SEQ2SEQ, num_mel_bins=8, max_source_positions=16, max_target_positions=16, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, classifier_proj_size=16, num_labels=3)),
    }[name]()


NAMES = ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "mpnet", "deberta-v2", "vit", "deit",
         "gpt2", "llama", "t5", "t5-v1.1", "bart", "marian", "whisper", "whisper-audio")


def build(name: str, seed: int = 0) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """(tiny model of family `name` in eval mode, example inputs) — see the module docstring."""
    import transformers

    transformers.logging.set_verbosity_error()  # tiny vocabularies make config warnings about special tokens
    cls, cfg = _config(name)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    return model, inputs(name, cfg)


def inputs(name: str, cfg, batch: int = 3, length: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Example inputs for a model of `name` (ids avoid the special tokens; the last row is padded)."""
    rng = np.random.default_rng(seed)
    if name in ("vit", "deit"):
        return {"pixel_values": rng.normal(size=(batch, 3, 16, 16)).astype(np.float32)}
    if name.startswith("whisper"):
        feats = {"input_features": rng.normal(size=(batch, 8, 32)).astype(np.float32)}
        if name == "whisper":
            feats["decoder_input_ids"] = rng.integers(3, 100, (batch, 4)).astype(np.int64)
        return feats
    ids = rng.integers(3, 100, (batch, length)).astype(np.int64)
    mask = np.ones((batch, length), dtype=np.int64)
    if name in ("t5", "t5-v1.1", "bart"):  # sequence classification reads the (single) eos of each row
        ids[:, -1] = cfg.eos_token_id
        return {"input_ids": ids, "attention_mask": mask}
    if name == "marian":
        return {"input_ids": ids, "attention_mask": mask,
                "decoder_input_ids": rng.integers(3, 100, (batch, 4)).astype(np.int64)}
    pad = getattr(cfg, "pad_token_id", 0) or 0
    mask[-1, length - 3:] = 0
    ids[-1, length - 3:] = pad
    return {"input_ids": ids, "attention_mask": mask}
