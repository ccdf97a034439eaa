"""Framework-neutral data the adapters hand to the core: layers, quantized tensors, batches."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from ..errors import InvalidDataError
from ..specs.selector import LayerRole

#: One model input: an array, or named arrays (e.g. input_ids, attention_mask).
Inputs = Union[np.ndarray, dict[str, np.ndarray]]


@dataclass(frozen=True)
class LayerInfo:
    """A compressible layer as the core sees it. Weights are in the neutral [out, in] layout."""

    name: str
    kind: str  # "linear", "embedding", ...
    role: LayerRole
    shape: tuple[int, ...]
    block: Optional[int] = None  # index of the Transformer block it belongs to, if any


@dataclass(frozen=True)
class AttentionInfo:
    """Where one attention block's projections are, and how many heads it has.

    Packed projections (`nn.MultiheadAttention.in_proj`, GPT-2's ``c_attn``) name one layer as query,
    key and value at once: its neutral [out, in] weight stacks the rows q | k | v (`packed`).
    `num_kv_heads` is the number of key/value heads of grouped-query attention (Llama-family), None when
    every head has its own K and V. `kind` is "self" or "cross" (decoder attending to the encoder).
    `removable` says whether the backend can physically remove heads of this block; `note` says why not,
    or what else a user should know (e.g. ALBERT: one set of weights shared by every block).
    """

    block: int
    query: str
    key: str
    value: str
    output: str
    num_heads: int
    head_dim: int
    num_kv_heads: Optional[int] = None
    kind: str = "self"
    removable: bool = True
    note: str = ""

    @property
    def packed(self) -> bool:
        """Whether Q, K and V are one packed layer (rows q | k | v)."""
        return self.query == self.key == self.value

    @property
    def kv_heads(self) -> int:
        """Heads of K and V (fewer than `num_heads` under grouped-query attention)."""
        return self.num_kv_heads or self.num_heads

    @property
    def layers(self) -> tuple[str, ...]:
        """The distinct layer names of this block, Q/K/V first, the output last."""
        return tuple(dict.fromkeys((self.query, self.key, self.value, self.output)))


@dataclass(frozen=True)
class FFNInfo:
    """One feed-forward pair: `ffn_in` widens to the intermediate size, `ffn_out` narrows back.

    Gated FFNs (Llama's SwiGLU, T5 v1.1's gated GELU) have a `gate` layer whose rows are the same
    neurons as `ffn_in`'s: a pruned neuron loses its row in both and its column of `ffn_out`.
    """

    block: int
    ffn_in: str
    ffn_out: str
    gate: Optional[str] = None
    removable: bool = True
    note: str = ""

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(n for n in (self.ffn_in, self.gate, self.ffn_out) if n)


@dataclass(frozen=True)
class TransformerStructure:
    """The neutral description of a Transformer: declared once, filled by each adapter (or the user).

    Blocks are numbered in model order across the whole model (an encoder's blocks, then a decoder's).
    `classifier` is the final task head (never quantized or pruned by the default selector), `pooler`
    any other layer of the head (BERT's pooler, RoBERTa's ``classifier.dense``). `shared_blocks` is True
    when blocks reuse one set of weights (ALBERT): pruning one block prunes them all. `source` says how
    it was found: "discovered" (from layer types and the model's config), "names" (the name fallback)
    or "declared" (the recipe's `structure:`). `architecture` names what was recognised.
    """

    hidden_size: int
    num_layers: int
    attention: tuple[AttentionInfo, ...] = ()
    ffn: tuple[FFNInfo, ...] = ()
    classifier: Optional[str] = None
    embeddings: tuple[str, ...] = ()
    pooler: tuple[str, ...] = ()
    shared_blocks: bool = False
    source: str = "discovered"
    architecture: str = ""

    def summary(self) -> str:
        """One line: what was found (for errors and reports)."""
        kinds = sorted({a.kind for a in self.attention})
        heads = sorted({a.num_heads for a in self.attention})
        return (f"{self.architecture or 'transformer'} ({self.source}): {len(self.attention)} attention block(s) "
                f"[{', '.join(kinds) or '-'}; heads {', '.join(map(str, heads)) or '-'}], {len(self.ffn)} FFN "
                f"pair(s), classifier {self.classifier or 'none'}, hidden {self.hidden_size}")


@dataclass(frozen=True)
class QuantizedTensor:
    """A weight as the backend stores it after quantization: integers plus their parameters.

    For linear mapping ``w ~= scale * (q - zero_point)``; for log mapping
    ``|w| ~= scale * base ** -(q - zero_point)`` with `sign` holding the signs and zeros.
    `axis` is the channel axis of per-channel parameters in the neutral [out, in] layout (0), or None.
    """

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    axis: Optional[int] = None
    mapping: str = "linear"
    sign: Optional[np.ndarray] = None
    base: float = 2.0

    def dequantize(self) -> np.ndarray:
        from ..reference.quantization import dequantize_tensor  # local: avoids an import cycle
        return dequantize_tensor(self)


@dataclass
class LayerStats:
    """One row of a model description: what a layer holds after compression."""

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    nonzero: int
    bits: int = 32
    role: str = "other"

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.params if self.params else 0.0

    @property
    def nbytes(self) -> float:
        return self.params * self.bits / 8


@dataclass
class TaskData:
    """Framework-neutral data for stages that calibrate or train.

    `train` yields (inputs, labels) batches of numpy arrays; `calibration` yields inputs;
    both are callables so each stage gets a fresh iterator. `num_labels` sizes classifier heads.
    """

    train: Optional[Callable[[], Iterable[tuple[Inputs, np.ndarray]]]] = None
    calibration: Optional[Callable[[], Iterable[Inputs]]] = None
    evaluation: Optional[Callable[[], Iterable[tuple[Inputs, np.ndarray]]]] = None
    num_labels: Optional[int] = None
    task: str = "classification"
    extra: dict[str, Any] = field(default_factory=dict)

    def endless_train(self, batch_size: Optional[int] = None) -> Iterator[tuple[Inputs, np.ndarray]]:
        """(inputs, labels) training batches forever, restarting `train()` when it runs out.

        With `batch_size` (a stage's ``training.batch_size``) the rows are re-batched so every batch
        holds exactly that many examples, whatever size `train()` yields; rows are taken in order and
        a remainder carries over into the next pass. Without it, `train()`'s batches pass through.

        Example: ``for step, (x, y) in zip(range(spec.steps), data.endless_train(spec.batch_size)): ...``
        """
        if self.train is None:
            raise ValueError("this stage trains the model: give TaskData with train batches (TaskData.train)")
        stream = self._endless_source()
        if batch_size is None:
            yield from stream
        else:
            yield from rebatch(stream, batch_size)

    def _endless_source(self) -> Iterator[tuple[Inputs, np.ndarray]]:
        while True:
            empty = True
            for x, y in self.train():
                # a batch without rows would make the loop spin; NaN inputs or float labels would train garbage
                check_batch(x, y, "TaskData.train", self.task)
                empty = False
                yield x, y
            if empty:
                raise InvalidDataError("TaskData.train yielded no batches")

    def calibration_batches(self, limit: int) -> list[Inputs]:
        """Up to `limit` calibration inputs (falls back to the train inputs)."""
        source = self.calibration or (lambda: (x for x, _ in self.train()) if self.train else iter(()))
        out = []
        for x in source():
            check_batch(x, None, "TaskData.calibration")  # NaN/inf inputs would give NaN ranges
            out.append(x)
            if len(out) >= limit:
                break
        return out


def rebatch(stream: Iterable[tuple[Inputs, np.ndarray]], batch_size: int) -> Iterator[tuple[Inputs, np.ndarray]]:
    """Re-cut a stream of (inputs, labels) batches into batches of exactly `batch_size` rows.

    Batches that already have the size pass through untouched (no copy). Rows must agree on every
    axis but the first, as they do when the loader pads to a fixed length.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts: list[tuple[Inputs, np.ndarray]] = []
    held = 0
    for x, y in stream:
        n = rows_of_batch(x, y, "the training data")  # 0 rows would never fill a batch: refuse, never spin
        if not parts and n == batch_size:
            yield x, y
            continue
        parts.append((x, np.asarray(y)))
        held += n
        while held >= batch_size:
            x_all = _concat([p[0] for p in parts])
            y_all = np.concatenate([p[1] for p in parts])
            yield _rows(x_all, 0, batch_size), y_all[:batch_size]
            held -= batch_size
            parts = [(_rows(x_all, batch_size, None), y_all[batch_size:])] if held else []


def _concat(inputs: Sequence[Inputs]) -> Inputs:
    if len(inputs) == 1:
        return inputs[0]
    try:
        if isinstance(inputs[0], dict):
            return {k: np.concatenate([x[k] for x in inputs]) for k in inputs[0]}
        return np.concatenate(list(inputs))
    except ValueError as err:
        raise ValueError("training.batch_size differs from the size of the batches TaskData.train yields, and "
                         f"those batches cannot be joined ({err}); pad every batch to one length or give "
                         "batches of training.batch_size rows") from None


def _rows(inputs: Inputs, start: int, stop: Optional[int]) -> Inputs:
    if isinstance(inputs, dict):
        return {k: v[start:stop] for k, v in inputs.items()}
    return inputs[start:stop]


def known_names(available: Iterable[str], names: Optional[Iterable[str]] = None) -> list[str]:
    """`names` (default: all of `available`), after checking each is available.

    The adapters' ``weights()``/``set_weights()`` look layers up through this, so an unknown name
    fails the same way on every backend: a KeyError naming it and the first known names.
    """
    known = list(available)
    wanted = known if names is None else list(names)
    lookup = set(known)
    missing = [n for n in wanted if n not in lookup]
    if missing:
        raise KeyError(f"no layer named {missing[0]!r}; known: {', '.join(known[:8])}"
                       f"{' ...' if len(known) > 8 else ''}")
    return wanted


def count_nonzero(values: np.ndarray) -> int:
    """Non-zero entries of an array (-0.0 counts as zero, NaN as non-zero).

    Counts the zeros of a boolean view: numpy's boolean count is SIMD, its float count is not
    (measured: 44 us against 224 us on a half-zero 1536x384 float32 matrix), and `describe`
    counts every weight of the model before and after each stage.
    """
    values = np.asarray(values)
    return int(values.size - np.count_nonzero(values == 0))


def rows_of_batch(inputs: Inputs, labels: Optional[np.ndarray], source: str) -> int:
    """The rows of one batch, after checking it has some and that every input (and the labels) agree.

    Raises InvalidDataError naming `source`: a batch without rows makes a training loop spin forever (the
    re-batcher never fills a batch), and inputs and labels of different lengths pair rows wrongly.
    Example: ``rows_of_batch({"input_ids": ids}, labels, "TaskData.train") == len(labels)``.
    """
    arrays = inputs if isinstance(inputs, dict) else {"inputs": inputs}
    if not arrays:
        raise InvalidDataError(f"{source} yielded a batch with no input arrays")
    rows = {name: (np.shape(a)[0] if np.ndim(a) else None) for name, a in arrays.items()}
    if labels is not None:
        rows["labels"] = np.shape(labels)[0] if np.ndim(labels) else None
    if any(r is None for r in rows.values()):
        raise InvalidDataError(f"{source} yielded a batch with a scalar where an array of rows belongs "
                               f"({', '.join(k for k, r in rows.items() if r is None)})")
    counts = set(rows.values())
    if len(counts) > 1:
        raise InvalidDataError(f"{source} yielded a batch whose arrays disagree on the number of rows: "
                               + ", ".join(f"{k} {r}" for k, r in rows.items()))
    n = int(counts.pop())
    if n == 0:
        raise InvalidDataError(f"{source} yielded a batch with no rows (shapes "
                               + ", ".join(f"{k} {tuple(np.shape(a))}" for k, a in arrays.items())
                               + "); drop empty batches, e.g. the last one of an exact split")
    return n


def check_batch(inputs: Inputs, labels: Optional[np.ndarray], source: str, task: str = "classification",
                num_labels: Optional[int] = None) -> int:
    """`rows_of_batch`, then the values: float inputs must be finite and class labels integers in
    ``[0, num_labels)``; returns the rows. Raises InvalidDataError naming `source` and the array.

    Example: ``check_batch({"x": np.ones((2, 3))}, np.array([0, 1]), "TaskData.train") == 2``.
    """
    n = rows_of_batch(inputs, labels, source)
    for name, values in (inputs.items() if isinstance(inputs, dict) else [("inputs", inputs)]):
        _refuse_non_finite(source, str(name), np.asarray(values))
    if labels is not None and task == "classification":
        _check_labels(source, np.asarray(labels), num_labels)
    return n


def _refuse_non_finite(source: str, name: str, values: np.ndarray) -> None:
    if values.dtype.kind not in "fc":
        return
    finite = np.isfinite(values)
    if finite.all():
        return
    nan = int(np.isnan(values).sum())
    raise InvalidDataError(f"{source}: input {name!r} holds {nan} NaN and {int(values.size - finite.sum()) - nan} "
                           f"infinite value(s) of {values.size}; every stage would compute NaN from them "
                           "(calibration ranges, losses): clean or drop those examples")


def _check_labels(source: str, labels: np.ndarray, num_labels: Optional[int]) -> None:
    if labels.dtype.kind == "b":
        return
    if labels.dtype.kind not in "iu":
        sample = labels.ravel()[:3].tolist() if labels.dtype.kind in "fc" else []
        raise InvalidDataError(f"{source}: labels are {labels.dtype}{' ' + str(sample) if sample else ''}; class "
                               "labels are integers (np.int64): a float label would be cut to an integer without a "
                               "word. Cast them with labels.astype(np.int64) once you know they are whole numbers")
    if num_labels and labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_labels:
            raise InvalidDataError(f"{source}: labels range over [{low}, {high}], outside [0, {num_labels}) of "
                                   f"TaskData.num_labels={num_labels}")
