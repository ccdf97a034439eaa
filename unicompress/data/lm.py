"""Causal language-modelling data: a text corpus as packed token blocks (task ``causal-lm``).

Steps, the same for every backend:
  1. documents: a plain text file gives one document per non-blank line (as ``datasets``' "text" loader
     and Hugging Face's run_clm do); a CSV/TSV/JSONL/Parquet file or a saved dataset gives one per row of
     its `text` column(s) (several columns are joined by a space); a list of strings is used as it is;
  2. splits: by document, contiguous and in file order (train first, then validation, then test: the held-out
     text is a fixed stretch that never shares a document with training), or by a split column;
  3. each document is tokenised whole with the model's own tokenizer (its special tokens included, no
     truncation), optionally followed by a `separator` id (e.g. the end-of-text token);
  4. packing, as run_clm's ``group_texts``: a split's ids are concatenated and cut into blocks of exactly
     `max_length` tokens, the remainder dropped (``drop_last=False`` keeps it as one last block, padded on the
     right with the attention mask 0 and the labels `IGNORE_INDEX`);
  5. labels = input_ids: the one-position shift happens in the loss (`unicompress.metrics.token_nll`, as in
     Hugging Face's ``*ForCausalLM``), so a batch is ``({"input_ids", "attention_mask"}, labels)``, all
     int64 [batch, max_length].

Example::

    data = from_text("kjv.txt", tokenizer="path/to/model", max_length=512, split={"test": 0.1})
    x, y = next(iter(data.evaluation()))      # x["input_ids"] [4, 512]; (y == x["input_ids"]).all()
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from ..backend.types import TaskData
from ..errors import InvalidDataError
from ..metrics import IGNORE_INDEX
from .builder import SPLIT_ALIASES, SPLITS, fractions_of
from .text import TextTokenizer, load_tokenizer

#: the task name of this data (``data: {task: causal-lm}``)
TASK = "causal-lm"
#: suffixes read as plain text, one document per line
TEXT_SUFFIXES = (".txt", ".text")
#: held out when neither `split` nor `split_column` is given (contiguous, at the end of the corpus)
DEFAULT_LM_SPLIT = {"validation": 0.05, "test": 0.05}


@dataclass(frozen=True)
class Blocks:
    """One split packed: `input_ids` and `attention_mask` int64 [n_blocks, max_length]."""

    input_ids: np.ndarray
    attention_mask: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def tokens(self) -> int:
        """Real (unpadded) tokens in the split."""
        return int(self.attention_mask.sum())

    def batch(self, idx: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Blocks `idx` as (inputs, labels); labels are the input ids, `IGNORE_INDEX` where padded."""
        ids, mask = self.input_ids[idx], self.attention_mask[idx]
        return {"input_ids": ids, "attention_mask": mask}, np.where(mask != 0, ids, IGNORE_INDEX)


def pack_blocks(sequences: Sequence[np.ndarray], max_length: int, *, drop_last: bool = True, pad_id: int = 0,
                separator: Optional[int] = None) -> Blocks:
    """Concatenate token sequences and cut them into blocks of `max_length` (run_clm's ``group_texts``).

    Example: ``pack_blocks([np.array([1, 2, 3]), np.array([4, 5])], 2).input_ids.tolist() == [[1, 2], [3, 4]]``
    (the remainder ``[5]`` is dropped; with ``drop_last=False`` it is a last block ``[5, pad_id]``).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (a block predicts its tokens after the first), got "
                         f"{max_length}")
    parts = []
    for seq in sequences:
        parts.append(np.asarray(seq, dtype=np.int64).reshape(-1))
        if separator is not None:
            parts.append(np.asarray([separator], dtype=np.int64))
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    full = len(flat) // max_length
    ids = flat[:full * max_length].reshape(full, max_length)
    mask = np.ones_like(ids)
    rest = len(flat) - full * max_length
    if not drop_last and rest:
        tail = np.full((1, max_length), pad_id, np.int64)
        tail[0, :rest] = flat[full * max_length:]
        tail_mask = np.zeros((1, max_length), np.int64)
        tail_mask[0, :rest] = 1
        ids, mask = np.concatenate([ids, tail]), np.concatenate([mask, tail_mask])
    return Blocks(ids, mask)


def encode_documents(tokenizer: Union[TextTokenizer, Any], texts: Sequence[str]) -> list[np.ndarray]:
    """The ids of each whole document (the tokenizer's special tokens included, never truncated)."""
    tok = load_tokenizer(tokenizer)
    texts = list(texts)
    backend = tok.backend
    if hasattr(backend, "encode_batch") and hasattr(backend, "no_truncation"):  # a tokenizers.Tokenizer
        backend.no_padding()
        backend.no_truncation()
        return [np.asarray(e.ids, dtype=np.int64) for e in backend.encode_batch(texts)]
    ids = backend(texts, truncation=False, padding=False, verbose=False)["input_ids"]  # a Hugging Face tokenizer
    return [np.asarray(s, dtype=np.int64) for s in ids]


def read_documents(path: Union[str, Path], text: Optional[Sequence[str]] = None, format: Optional[str] = None,
                   split_column: Optional[str] = None) -> tuple[list[str], Optional[list[Any]]]:
    """(documents, each one's split value or None) of a text file or a table's text column(s); see step 1."""
    p = Path(path)
    if format is None and p.suffix.lower() in TEXT_SUFFIXES:
        if split_column:
            raise ValueError(f"{p}: a plain text file has no columns, so no split_column; use split fractions")
        with open(p, encoding="utf-8-sig") as fh:
            return [line.rstrip("\r\n") for line in fh if line.strip()], None
    if not text:
        raise ValueError(f"{p}: name the text column(s) of the table (text: [...])")
    from .tables import read_table

    columns = [*text, *([split_column] if split_column else [])]
    parts = read_table(p, list(dict.fromkeys(columns)), format)
    docs: list[str] = []
    values: list[Any] = []
    for name, cols in parts.items():  # a saved DatasetDict's splits are joined, each row keeping its split
        for i, row in enumerate(zip(*(cols[c] for c in text))):
            docs.append(" ".join("" if v is None else str(v) for v in row).strip())
            values.append(cols[split_column][i] if split_column else name)
    keep = [i for i, d in enumerate(docs) if d]
    given = split_column is not None or set(parts) != {"all"}
    return [docs[i] for i in keep], ([values[i] for i in keep] if given else None)


def split_documents(count: int, split: Optional[Mapping[str, float]] = None,
                    split_values: Optional[Sequence[Any]] = None) -> dict[str, np.ndarray]:
    """Document indices of train / validation / test: contiguous fractions (train first, test last) or a
    split value per document. Example: 10 documents, ``{"test": 0.2}`` -> test is documents 8 and 9."""
    if split is not None and split_values is not None:
        raise ValueError("give split fractions or a split column, not both")
    if split_values is not None:
        names = [SPLIT_ALIASES.get(str(v).strip().lower()) for v in split_values]
        bad = sorted({str(v) for v, n in zip(split_values, names) if n is None})
        if bad:
            raise InvalidDataError(f"split column holds {', '.join(map(repr, bad[:5]))}; values are train, "
                                   "validation (or val, valid, dev, eval) and test")
        return {s: np.flatnonzero(np.asarray(names, dtype=object) == s).astype(np.int64) for s in SPLITS}
    fractions = fractions_of(DEFAULT_LM_SPLIT if split is None else split)
    n_val, n_test = (int(round(count * fractions[k])) for k in ("validation", "test"))
    n_train = count - n_val - n_test
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, count)}
    return {k: np.arange(a, b, dtype=np.int64) for k, (a, b) in bounds.items()}


@dataclass
class LMTaskData(TaskData):
    """A TaskData of packed token blocks per split (train / validation / test); see the module's steps.

    `train()` yields the train blocks in a seeded order (the same every call) in batches of
    ``extra["batch_size"]``; `calibration()` their inputs; `evaluation()` the test blocks in order, in batches of
    ``extra["eval_batch_size"]``; ``extra["validation"]()`` the validation blocks.
    """

    blocks: dict[str, Blocks] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        bs = self.extra.get("batch_size", 8)
        ebs = self.extra.get("eval_batch_size", 4)
        cbs = self.extra.get("calibration_batch_size", 4)
        if len(self.blocks.get("train", ())):
            self.train = self.train or (lambda: self.batches("train", bs, shuffle=True))
            self.calibration = self.calibration or (lambda: (x for x, _ in self.batches("train", cbs, shuffle=True)))
        if len(self.blocks.get("test", ())):
            self.evaluation = self.evaluation or (lambda: self.batches("test", ebs))
        if len(self.blocks.get("validation", ())):
            self.extra.setdefault("validation", lambda: self.batches("validation", ebs))
        self.extra["sizes"] = {k: len(v) for k, v in self.blocks.items()}
        self.extra["tokens"] = {k: v.tokens for k, v in self.blocks.items()}

    def batches(self, split: str, batch_size: int, shuffle: bool = False
                ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """One pass over `split`'s blocks, `batch_size` at a time (seeded order when `shuffle`)."""
        part = self.blocks[split]
        order = np.random.default_rng(self.seed).permutation(len(part)) if shuffle else np.arange(len(part))
        for start in range(0, len(order), batch_size):
            yield part.batch(order[start:start + batch_size])


def build_lm_data(documents: Sequence[str], *, tokenizer: Any, max_length: int = 512,
                  split: Optional[Mapping[str, float]] = None, split_values: Optional[Sequence[Any]] = None,
                  batch_size: int = 8, eval_batch_size: int = 4, calibration_batch_size: int = 4, seed: int = 0,
                  drop_last: bool = True, separator: Optional[int] = None, max_train_blocks: Optional[int] = None,
                  max_eval_blocks: Optional[int] = None, source: str = "documents") -> LMTaskData:
    """Documents to an LMTaskData (steps 2-5 of the module): split, tokenised whole, packed, labels = inputs.

    `max_train_blocks` / `max_eval_blocks` keep the first blocks of each split (a fixed, smaller corpus).
    Example: ``build_lm_data(verses, tokenizer=folder, max_length=256, split={"test": 0.1}).extra["tokens"]``.
    """
    tok = load_tokenizer(tokenizer)
    if not 2 <= max_length <= tok.model_max_length:
        raise ValueError(f"max_length must be in [2, {tok.model_max_length}] (the model's longest input), got "
                         f"{max_length}")
    documents = list(documents)
    if split_values is not None and len(split_values) != len(documents):
        raise ValueError(f"{len(documents)} documents but {len(split_values)} split values")
    rows = split_documents(len(documents), split, split_values)
    ids = encode_documents(tok, documents)
    blocks = {}
    for name, idx in rows.items():
        packed = pack_blocks([ids[i] for i in idx], max_length, drop_last=drop_last, pad_id=tok.pad_id,
                             separator=separator)
        limit = max_train_blocks if name == "train" else max_eval_blocks
        if limit is not None and limit < len(packed):
            packed = Blocks(packed.input_ids[:limit], packed.attention_mask[:limit])
        blocks[name] = packed
    if not len(blocks["train"]) and not len(blocks["test"]):
        raise InvalidDataError(f"{source}: {sum(len(s) for s in ids)} tokens make no block of {max_length}; "
                               "give more text or a smaller max_length")
    extra: dict[str, Any] = {
        "source": source, "tokenizer": tok.source, "max_length": max_length, "packing": "run_clm group_texts",
        "drop_last": drop_last, "documents": {k: len(v) for k, v in rows.items()}, "batch_size": batch_size,
        "eval_batch_size": eval_batch_size, "calibration_batch_size": calibration_batch_size, "seed": seed,
        "vocab_size": len(tok.vocab())}
    return LMTaskData(num_labels=None, task=TASK, extra=extra, blocks=blocks, seed=seed)


def from_text(source: Union[str, Path, Sequence[str]], *, tokenizer: Any, text: Optional[Union[str, Sequence[str]]]
              = None, format: Optional[str] = None, split_column: Optional[str] = None, **options: Any
              ) -> LMTaskData:
    """A corpus as an LMTaskData: a text file (one document per line), a table file's `text` column(s), or a
    list of strings. `options` are `build_lm_data`'s (max_length, split, batch_size, drop_last, separator, ...).

    Example: ``from_text("corpus.txt", tokenizer=folder, max_length=128).evaluation()``.
    """
    if isinstance(source, (str, Path)):
        names = [text] if isinstance(text, str) else (list(text) if text else None)
        docs, values = read_documents(source, names, format, split_column)
        if values is not None and options.get("split") is None:
            options["split_values"] = values
        return build_lm_data(docs, tokenizer=tokenizer, source=str(source), **options)
    return build_lm_data([str(s) for s in source], tokenizer=tokenizer, source="texts", **options)


__all__ = ["TASK", "Blocks", "LMTaskData", "pack_blocks", "encode_documents", "read_documents", "split_documents",
           "build_lm_data", "from_text", "DEFAULT_LM_SPLIT", "TEXT_SUFFIXES"]
