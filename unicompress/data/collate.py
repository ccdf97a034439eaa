"""Dynamic padding and length bucketing of tokenised texts, so short texts do not pay for the longest.

A `TokenSplit` holds one split unpadded (one id array per example). Batches are padded to their own
longest row (`pad_batch`), not to max_length, and `bucket_order` groups rows of similar length: the
rows are shuffled, cut into windows of `window` rows, each window is sorted by length and cut into
batches, and the batches of a window are shuffled. So every batch is a random draw of similar lengths,
and the same seed gives the same batches on every backend.

Example: three rows of 3, 9 and 4 tokens in one batch give ``input_ids`` of shape [3, 9] and an
``attention_mask`` with 3, 9 and 4 ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np

#: rows per bucketing window, as a multiple of the batch size
WINDOW_BATCHES = 50


@dataclass(frozen=True)
class TokenSplit:
    """One split, unpadded: `ids[i]` are example i's token ids, `labels[i]` its class.

    `extra_ids` holds other models' ids of the same rows (e.g. ``{"teacher": [...]}``), `texts` the raw texts
    (kept so another tokenizer can encode them later), `rows` each example's row in the source.
    """

    ids: tuple[np.ndarray, ...]
    labels: np.ndarray
    rows: np.ndarray
    texts: tuple[str, ...] = ()
    pairs: Optional[tuple[str, ...]] = None
    extra_ids: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens of each example (int64)."""
        return np.fromiter((len(s) for s in self.ids), dtype=np.int64, count=len(self.ids))

    def take(self, n: Optional[int]) -> "TokenSplit":
        """The first `n` examples (all when None); splits are stored shuffled, so a random subset."""
        if n is None or n >= len(self):
            return self
        return TokenSplit(self.ids[:n], self.labels[:n], self.rows[:n], self.texts[:n],
                          self.pairs[:n] if self.pairs is not None else None,
                          {k: v[:n] for k, v in self.extra_ids.items()})

    def with_ids(self, name: str, ids: Sequence[np.ndarray]) -> "TokenSplit":
        """This split with another model's ids of the same rows under `name`."""
        if len(ids) != len(self):
            raise ValueError(f"{len(ids)} {name} encodings for {len(self)} examples")
        return TokenSplit(self.ids, self.labels, self.rows, self.texts, self.pairs,
                          {**self.extra_ids, name: tuple(ids)})

    def batch(self, idx: np.ndarray, pad_id: int = 0, pad_to: Optional[int] = None,
              extra_pad: Optional[dict[str, int]] = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Rows `idx` as padded inputs and their labels; other models' ids come as ``<name>_input_ids`` and
        ``<name>_attention_mask``, each padded to its own longest row."""
        inputs = pad_batch([self.ids[i] for i in idx], pad_id, pad_to)
        for name, ids in self.extra_ids.items():
            padded = pad_batch([ids[i] for i in idx], (extra_pad or {}).get(name, 0), pad_to)
            inputs.update({f"{name}_{k}": v for k, v in padded.items()})
        return inputs, self.labels[idx]


def pad_batch(seqs: Sequence[np.ndarray], pad_id: int = 0, pad_to: Optional[int] = None) -> dict[str, np.ndarray]:
    """{"input_ids", "attention_mask"} int64 [N, L]: L is the longest row (or `pad_to`), padding on the right.

    Example: ``pad_batch([np.array([1, 2]), np.array([3])])["attention_mask"].tolist() == [[1, 1], [1, 0]]``.
    """
    if not seqs:
        raise ValueError("a batch needs at least one row")
    width = max(len(s) for s in seqs) if pad_to is None else pad_to
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        if len(seq) > width:
            raise ValueError(f"row {row} has {len(seq)} tokens, more than the padded length {width}")
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def bucket_order(lengths: np.ndarray, batch_size: int, seed: int, window: Optional[int] = None,
                 shuffle: bool = True) -> list[np.ndarray]:
    """The row indices of each batch: similar lengths together, a random draw of them per batch.

    Without `shuffle` (evaluation) the rows are sorted by length (stable) and cut in order. `window`
    defaults to ``WINDOW_BATCHES * batch_size`` rows. The last batch of a window may be smaller.
    Example: ``bucket_order(np.array([5, 1, 5, 1]), 2, 0, shuffle=False) == [array([1, 3]), array([0, 2])]``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = np.asarray(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng = np.random.default_rng(seed)
    return _bucket(rng.permutation(len(lengths)), lengths, batch_size, window or WINDOW_BATCHES * batch_size, rng)


def _bucket(order: np.ndarray, lengths: np.ndarray, batch_size: int, window: int, rng: np.random.Generator
            ) -> list[np.ndarray]:
    batches: list[np.ndarray] = []
    for start in range(0, len(order), window):
        part = order[start:start + window]
        part = part[np.argsort(lengths[part], kind="stable")]
        chunk = [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        batches += [chunk[i] for i in rng.permutation(len(chunk))]
    return batches


def endless_order(n: int, lengths: np.ndarray, batch_size: int, seed: int, window: Optional[int] = None
                  ) -> Iterator[np.ndarray]:
    """Batches of exactly `batch_size` row indices forever: epochs (a fresh permutation each, from `seed`)
    are joined end to end, so no row is dropped and a split smaller than a batch still fills one."""
    if n < 1:
        raise ValueError("the split has no examples")
    rng = np.random.default_rng(seed)
    window = max(window or WINDOW_BATCHES * batch_size, batch_size)
    pending = np.zeros(0, dtype=np.int64)
    while True:
        while len(pending) < window:
            pending = np.concatenate([pending, rng.permutation(n)])
        part, pending = pending[:window - window % batch_size], pending[window - window % batch_size:]
        yield from _bucket(part, lengths, batch_size, len(part), rng)


__all__ = ["TokenSplit", "pad_batch", "bucket_order", "endless_order", "WINDOW_BATCHES"]
