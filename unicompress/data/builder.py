"""One builder from columns of text and labels to a `TextTaskData`; the sources (`sources.py`) all end here.

Steps, fixed and documented so every backend and every run sees the same examples:
  1. the text columns must hold text in every row (a missing value is refused, naming the column and row);
     one column is one segment, two or more are a pair: the first, and the others joined by a space;
  2. labels: integers >= 0 (or their text, "0", "3") are class ids as they are; anything else (strings) is
     mapped to ids in sorted order, or in the order of `classes` when given; the names are kept in
     ``extra["class_names"]`` and the mapping in ``extra["label_ids"]``;
  3. splits: a split column (train / validation / test; val, valid, dev and eval mean validation), or
     fractions ``{"test": 0.1, "validation": 0.1}`` drawn per class with `seed` (`splits.stratified_split`);
  4. each text is tokenised once with the model's own tokenizer, truncated to `max_length`, unpadded;
     batches are padded to their longest row and bucketed by length (`collate`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from ..backend.types import Inputs, TaskData, check_batch
from ..errors import InvalidDataError
from .collate import TokenSplit, bucket_order, endless_order
from .splits import first_occurrences, stratified_split
from .text import load_tokenizer
from .tokenize import fold_vocab

#: fractions used when neither `split` nor `split_column` is given (the package's 80/10/10)
DEFAULT_SPLIT = {"validation": 0.1, "test": 0.1}
#: values of a split column and the split each names
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "eval": "validation", "test": "test", "testing": "test"}
SPLITS = ("train", "validation", "test")
#: tasks the builder makes data for (the other tasks of issue #14 come with their own builders)
TASKS = ("classification",)
_INT_TEXT = re.compile(r"[+-]?\d+")


@dataclass
class TextTaskData(TaskData):
    """A TaskData over unpadded token splits: every batch is padded to its own longest row.

    `train()` yields one epoch of length-bucketed batches of ``extra["batch_size"]`` (the same order every
    call); `endless_train(batch_size)` re-cuts the rows themselves into batches of exactly that size (a fresh
    bucketed order each epoch), so a stage's ``training.batch_size`` never has to join batches of different
    lengths. `evaluation()` is the test split sorted by length. With `with_teacher` the batches also carry
    ``teacher_input_ids`` / ``teacher_attention_mask`` (see `unicompress.data.teacher`).
    """

    token_splits: dict[str, TokenSplit] = field(default_factory=dict)
    pad_ids: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    pad_to: Optional[int] = None
    vocab_size: Optional[int] = None
    window: Optional[int] = None
    with_teacher: bool = False

    def __post_init__(self) -> None:
        sizes = {k: len(v) for k, v in self.token_splits.items()}
        bs = self.extra.get("batch_size", 16)
        ebs = self.extra.get("eval_batch_size", 64)
        cbs = self.extra.get("calibration_batch_size", 32)
        if sizes.get("train"):
            self.train = self.train or (lambda: self.batches("train", bs, shuffle=True, seed=self.seed))
            self.calibration = self.calibration or (lambda: (x for x, _ in self.batches(
                "train", cbs, shuffle=True, seed=self.seed + 1)))
        if sizes.get("test"):
            self.evaluation = self.evaluation or (lambda: self.batches("test", ebs))
        if sizes.get("validation"):
            self.extra.setdefault("validation", lambda: self.batches("validation", ebs))
        self.extra["sizes"] = sizes

    def batches(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0
                ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """One pass over `split` in batches of `batch_size` (bucketed when `shuffle`, else sorted by length)."""
        part = self.token_splits[split]
        for idx in bucket_order(part.lengths, batch_size, seed, self.window, shuffle=shuffle):
            yield self._batch(part, idx)

    def endless_train(self, batch_size: Optional[int] = None) -> Iterator[tuple[Inputs, np.ndarray]]:
        """Training batches of exactly `batch_size` rows (default ``extra["batch_size"]``) forever."""
        part = self.token_splits.get("train")
        if part is None or not len(part):
            raise InvalidDataError("TaskData.train: the train split has no examples")
        size = batch_size or self.extra.get("batch_size", 16)
        for idx in endless_order(len(part), part.lengths, size, self.seed, self.window):
            x, y = self._batch(part, idx)
            check_batch(x, y, "TaskData.train", self.task)
            yield x, y

    def _batch(self, part: TokenSplit, idx: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        source = part if self.with_teacher else TokenSplit(part.ids, part.labels, part.rows)
        x, y = source.batch(idx, self.pad_ids.get("", 0), self.pad_to, self.pad_ids)
        if self.vocab_size is not None:  # tiny test models: fold ids into their small vocabulary
            x["input_ids"] = fold_vocab(x["input_ids"], x["attention_mask"], self.vocab_size)
        return x, y


def class_ids(values: Sequence[Any], classes: Optional[Sequence[str]] = None, column: str = "label"
              ) -> tuple[np.ndarray, list[str]]:
    """(int64 class ids, class names) of a label column; see the module's step 2.

    Example: ``class_ids(["tech", "sport", "tech"]) == (array([1, 0, 1]), ["sport", "tech"])``.
    """
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip()):
            raise InvalidDataError(f"label column {column!r}: row {i} has no label ({v!r})")
    if classes is not None:
        names = [str(c) for c in classes]
        lookup = {n: k for k, n in enumerate(names)}
        unknown = sorted({str(v) for v in values} - set(lookup))
        if unknown:
            raise InvalidDataError(f"label column {column!r} holds {', '.join(map(repr, unknown[:5]))}, not in "
                                   f"classes {names}")
        return np.asarray([lookup[str(v)] for v in values], dtype=np.int64), names
    ints = _as_class_ints(values)
    if ints is not None:
        return ints, [str(k) for k in range(int(ints.max()) + 1 if len(ints) else 0)]
    names = sorted({str(v) for v in values})
    lookup = {n: k for k, n in enumerate(names)}
    return np.asarray([lookup[str(v)] for v in values], dtype=np.int64), names


def _as_class_ints(values: Sequence[Any]) -> Optional[np.ndarray]:
    """The values as ids when every one is a whole number >= 0 (int, bool, whole float or digits), else None."""
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)):
            out.append(int(v))
        elif isinstance(v, (int, np.integer)):
            out.append(int(v))
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            out.append(int(v))
        elif isinstance(v, str) and _INT_TEXT.fullmatch(v.strip()):
            out.append(int(v))
        else:
            return None
    ids = np.asarray(out, dtype=np.int64)
    return ids if not len(ids) or ids.min() >= 0 else None


def split_rows(labels: np.ndarray, split: Optional[Mapping[str, float]] = None,
               split_values: Optional[Sequence[Any]] = None, seed: int = 0, column: str = "split"
               ) -> dict[str, np.ndarray]:
    """The row indices of train / validation / test (each shuffled with `seed`); see the module's step 3.

    Example: ``{k: len(v) for k, v in split_rows(y, {"test": 0.2}).items()}`` for 10 rows of one class gives
    ``{"train": 8, "validation": 0, "test": 2}``.
    """
    if split is not None and split_values is not None:
        raise ValueError("give split fractions or a split column, not both")
    rng = np.random.default_rng(seed)
    if split_values is not None:
        names = [SPLIT_ALIASES.get(str(v).strip().lower()) for v in split_values]
        bad = sorted({str(v) for v, n in zip(split_values, names) if n is None})
        if bad:
            raise InvalidDataError(f"split column {column!r} holds {', '.join(map(repr, bad[:5]))}; values are "
                                   f"train, validation (or val, valid, dev, eval) and test")
        rows = {s: rng.permutation(np.flatnonzero(np.asarray(names) == s)).astype(np.int64) for s in SPLITS}
    else:
        fractions = fractions_of(split)
        parts = stratified_split(labels, (fractions["train"], fractions["validation"], fractions["test"]), seed)
        rows = dict(zip(SPLITS, parts))
    if not len(rows["train"]):
        raise InvalidDataError(f"the train split is empty ({len(labels)} examples; split sizes "
                               f"{ {k: len(v) for k, v in rows.items()} })")
    return rows


def fractions_of(split: Optional[Mapping[str, float]]) -> dict[str, float]:
    """{"train", "validation", "test"} fractions from a split mapping of test and/or validation fractions."""
    split = dict(DEFAULT_SPLIT if split is None else split)
    unknown = sorted(set(split) - {"test", "validation"})
    if unknown:
        raise ValueError(f"split takes test and validation fractions (train is the rest), not {unknown}")
    out = {k: float(split.get(k, 0.0)) for k in ("validation", "test")}
    for k, f in out.items():
        if not 0.0 <= f < 1.0:
            raise ValueError(f"split.{k} must be in [0, 1), got {f}")
    out["train"] = 1.0 - out["validation"] - out["test"]
    if out["train"] <= 0.0:
        raise ValueError(f"split.test + split.validation = {1 - out['train']:.3g} leaves no training examples "
                         "(they must sum to less than 1)")
    return out


def texts_of(columns: Mapping[str, Sequence[Any]], text: Sequence[str]) -> tuple[list[str], Optional[list[str]]]:
    """(first segments, second segments or None) of the text columns; see the module's step 1."""
    if not text:
        raise ValueError("name at least one text column (text: [...])")
    values = []
    for name in text:
        col = []
        for i, v in enumerate(columns[name]):
            if v is None or (isinstance(v, float) and np.isnan(v)):
                raise InvalidDataError(f"text column {name!r}: row {i} has no text ({v!r})")
            col.append(v if isinstance(v, str) else str(v))
        values.append(col)
    if len(values) == 1:
        return values[0], None
    return values[0], [" ".join(parts) for parts in zip(*values[1:])]


def build_text_data(columns: Mapping[str, Sequence[Any]], *, text: Union[str, Sequence[str]], label: str,
                    tokenizer: Any, task: str = "classification", split: Optional[Mapping[str, float]] = None,
                    split_column: Optional[str] = None, given_splits: Optional[Mapping[str, Mapping[str, Sequence]]]
                    = None, max_length: int = 128, batch_size: int = 16, eval_batch_size: int = 64,
                    calibration_batch_size: int = 32, seed: int = 0, classes: Optional[Sequence[str]] = None,
                    padding: str = "longest", teacher_tokenizer: Any = None, drop_duplicates: bool = False,
                    vocab_size: Optional[int] = None, max_train: Optional[int] = None,
                    max_eval: Optional[int] = None, source: str = "columns") -> TextTaskData:
    """The shared builder: columns (name -> values) to a TextTaskData; every ``from_*`` function ends here.

    `given_splits` are columns already split (a DatasetDict's train / validation / test); `tokenizer` is a
    model folder (offline) or a loaded tokenizer; `padding` "longest" pads each batch to its longest row,
    "max_length" to `max_length` (for backends that need one shape). `teacher_tokenizer`: when it differs
    from `tokenizer`, the teacher's ids of the same texts ride along for distillation (``extra["teacher_data"]``).
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r}: the data builder makes {', '.join(TASKS)} data")
    if padding not in ("longest", "max_length"):
        raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
    text = [text] if isinstance(text, str) else list(text)
    tok = load_tokenizer(tokenizer)
    if not 2 <= max_length <= tok.model_max_length:
        raise ValueError(f"max_length must be in [2, {tok.model_max_length}] (the model's longest input), "
                         f"got {max_length}")
    if given_splits is not None:
        columns, split_values = _join_splits(given_splits)
    else:
        split_values = list(columns[split_column]) if split_column else None
    firsts, seconds = texts_of(columns, text)
    labels, names = class_ids(list(columns[label]), classes, label)
    keep = np.arange(len(firsts))
    if drop_duplicates:  # exact duplicates would leak between train and test
        keep = first_occurrences([(a, b) for a, b in zip(firsts, seconds or [None] * len(firsts))])
    rows = split_rows(labels[keep], split, [split_values[i] for i in keep] if split_values is not None else None,
                      seed, split_column or "split")
    ids = tok.encode(firsts, seconds, max_length)
    splits = {}
    for name, idx in rows.items():
        src = keep[idx]
        limit = max_train if name == "train" else max_eval
        part = TokenSplit(tuple(ids[i] for i in src), labels[src], src.astype(np.int64),
                          tuple(firsts[i] for i in src), tuple(seconds[i] for i in src) if seconds else None)
        splits[name] = part.take(limit)
    extra: dict[str, Any] = {
        "source": source, "class_names": names, "label_ids": {n: k for k, n in enumerate(names)},
        "text_columns": text, "label_column": label, "max_length": max_length, "padding": padding,
        "tokenizer": tok.source, "splits": splits, "batch_size": batch_size, "eval_batch_size": eval_batch_size,
        "calibration_batch_size": calibration_batch_size, "seed": seed}
    data = TextTaskData(num_labels=len(names), task=task, extra=extra, token_splits=splits,
                        pad_ids={"": tok.pad_id}, seed=seed, pad_to=max_length if padding == "max_length" else None,
                        vocab_size=vocab_size)
    if teacher_tokenizer is not None:
        from .teacher import attach_teacher

        attach_teacher(data, teacher_tokenizer, student_tokenizer=tok)
    return data


def _join_splits(given: Mapping[str, Mapping[str, Sequence]]) -> tuple[dict[str, list], list[str]]:
    """Columns of named splits joined into one table, with each row's split name."""
    columns: dict[str, list] = {}
    values: list[str] = []
    for name, cols in given.items():
        n = len(next(iter(cols.values()))) if cols else 0
        for key, col in cols.items():
            columns.setdefault(key, []).extend(col)
        values += [name] * n
    return columns, values


__all__ = ["TextTaskData", "build_text_data", "class_ids", "split_rows", "fractions_of", "texts_of",
           "DEFAULT_SPLIT", "SPLIT_ALIASES", "TASKS"]
