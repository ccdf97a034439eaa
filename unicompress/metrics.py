"""Task metrics computed in the core from a backend's `run()` outputs (numpy only, the same on every backend).

Causal language modelling: the perplexity of a model on token blocks is ``exp(mean token NLL)``, where the
NLL of a token is ``-log softmax(logits[t - 1])[label[t]]``: the logits at position t predict the token at
t + 1, so the shift happens here, in the loss (as in Hugging Face's ``*ForCausalLM`` loss), and the labels of
a batch are simply its ``input_ids``. Positions whose label is `IGNORE_INDEX` (-100, Hugging Face's value) or
whose ``attention_mask`` is 0 (padding) are excluded; so is the first position of every row (nothing
predicts it). The log-softmax is the stable one (max subtracted, float64), computed a chunk of positions at a
time so a [batch, seq, 49k vocab] output never needs more than a few float64 copies of one chunk.

Example::

    total, count = token_nll(np.zeros((1, 5, 10)), np.arange(5)[None])   # uniform logits over 10 tokens
    math.exp(total / count) == 10.0                                        # the perplexity is the vocab size
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np

#: labels of positions that count in no loss (Hugging Face's ``ignore_index``)
IGNORE_INDEX = -100
#: positions whose log-softmax is computed at once (bounds the float64 temporaries: 256 x 49k x 8 B = 100 MB)
CHUNK_POSITIONS = 256


def token_nll(logits: np.ndarray, labels: np.ndarray, attention_mask: Optional[np.ndarray] = None,
              ignore_index: int = IGNORE_INDEX) -> tuple[float, int]:
    """(sum of the next-token NLLs in nats, tokens counted) of one batch: logits [B, S, V], labels [B, S].

    `attention_mask` [B, S] (1 = real token) excludes padded targets; labels equal to `ignore_index` are
    excluded too. Raises ValueError when the shapes do not fit (labels outside ``[0, V)`` included).
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 3:
        raise ValueError(f"causal-lm logits are [batch, seq, vocab]; got shape {list(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels {list(labels.shape)} do not match the logits' [batch, seq] "
                         f"{list(logits.shape[:2])}")
    vocab = logits.shape[2]
    pred = logits[:, :-1].reshape(-1, vocab)  # position t predicts token t + 1
    target = labels[:, 1:].reshape(-1).astype(np.int64)
    keep = target != ignore_index
    if attention_mask is not None:
        mask = np.asarray(attention_mask)
        if mask.shape != labels.shape:
            raise ValueError(f"attention_mask {list(mask.shape)} does not match the labels {list(labels.shape)}")
        keep &= mask[:, 1:].reshape(-1) != 0
    rows = np.flatnonzero(keep)
    if rows.size and (target[rows].min() < 0 or target[rows].max() >= vocab):
        raise ValueError(f"labels range over [{int(target[rows].min())}, {int(target[rows].max())}], outside the "
                         f"vocabulary [0, {vocab}) of the logits")
    total = 0.0
    for start in range(0, rows.size, CHUNK_POSITIONS):
        idx = rows[start:start + CHUNK_POSITIONS]
        chunk = pred[idx].astype(np.float64)
        top = chunk.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(chunk - top).sum(axis=1))
        total += float((log_z - chunk[np.arange(idx.size), target[idx]]).sum())
    return total, int(rows.size)


@dataclass
class NLLTotal:
    """A running sum of token NLLs over batches; `metrics()` gives perplexity, mean NLL and the token count."""

    total: float = 0.0
    tokens: int = 0

    def add(self, logits: np.ndarray, labels: np.ndarray, attention_mask: Optional[np.ndarray] = None) -> None:
        """Count one batch (see `token_nll`)."""
        total, count = token_nll(logits, labels, attention_mask)
        self.total += total
        self.tokens += count

    def metrics(self) -> dict[str, float]:
        """``{"perplexity": exp(nll), "nll": mean NLL in nats, "tokens": n}`` (NaN without tokens)."""
        if not self.tokens:
            return {"perplexity": float("nan"), "nll": float("nan"), "tokens": 0}
        nll = self.total / self.tokens
        return {"perplexity": math.exp(nll), "nll": nll, "tokens": self.tokens}


def perplexity(logits: np.ndarray, labels: np.ndarray, attention_mask: Optional[np.ndarray] = None) -> float:
    """``exp(mean next-token NLL)`` of one batch. Example: uniform logits over V tokens give exactly V."""
    acc = NLLTotal()
    acc.add(logits, labels, attention_mask)
    return acc.metrics()["perplexity"]


def causal_lm_metrics(run: Callable[[Any], np.ndarray], batches: Iterable[tuple[Any, np.ndarray]],
                      rows_per_run: int = 4) -> dict[str, float]:
    """Perplexity of a model over (inputs, labels) token blocks, `run(inputs) -> logits [B, S, V]` being the
    backend's ``run`` bound to the model. Each batch is run `rows_per_run` rows at a time and reduced to its
    NLL at once, so at most one small slice of logits is alive (49k vocab x 512 x 4 rows = 400 MB in float32).
    """
    acc = NLLTotal()
    for inputs, labels in batches:
        labels = np.asarray(labels)
        for start in range(0, labels.shape[0], rows_per_run):
            part = slice(start, start + rows_per_run)
            x = {k: np.asarray(v)[part] for k, v in inputs.items()} if isinstance(inputs, Mapping) else \
                np.asarray(inputs)[part]
            mask = x.get("attention_mask") if isinstance(x, dict) else None
            acc.add(run(x), labels[part], mask)
    return acc.metrics()


__all__ = ["token_nll", "NLLTotal", "perplexity", "causal_lm_metrics", "IGNORE_INDEX"]
