"""Your data as a TaskData: one function per form, all sharing one builder (`builder.build_text_data`).

Text tables (tokenised with the model's own tokenizer, offline)::

    from unicompress.data import from_csv
    data = from_csv("news.csv", text=["title", "body"], label="category", tokenizer="path/to/model",
                    split={"test": 0.2, "validation": 0.1}, max_length=128, batch_size=32)

Also `from_tsv`, `from_jsonl`, `from_parquet`, `from_file` (format from the suffix), `from_dataframe`
(pandas), `from_hf_dataset` (a ``datasets`` Dataset / DatasetDict), `from_saved_dataset` (``save_to_disk``
folder). Arrays and loaders: `from_arrays` (numpy inputs and labels, split like the text tables) and
`from_batches` (any iterable of (inputs, labels) batches: a torch / TensorFlow / Paddle data loader, a list;
tensors become numpy arrays through their own ``.numpy()``, no framework is imported).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from ..backend.types import Inputs, TaskData
from ..errors import InvalidDataError
from .builder import TextTaskData, build_text_data, class_ids, split_rows
from .splits import ArraySplit, task_data_from_splits
from .tables import class_names_of, dataframe_columns, dataset_columns, read_table

Text = Union[str, Sequence[str]]
#: the key a bare input array gets (the adapters pass a one-entry dict to the model positionally)
ARRAY_KEY = "input"


def _wanted(text: Text, label: str, split_column: Optional[str]) -> list[str]:
    names = [text] if isinstance(text, str) else list(text)
    return list(dict.fromkeys([*names, label, *([split_column] if split_column else [])]))


def from_file(path: Union[str, Path], *, text: Text, label: str, tokenizer: Any, format: Optional[str] = None,
              split_column: Optional[str] = None, **options: Any) -> TextTaskData:
    """A CSV, TSV, JSON Lines or Parquet file, or a saved Hugging Face dataset folder, as a TextTaskData.

    `options` are `build_text_data`'s (split, max_length, batch_size, seed, classes, padding, ...). A saved
    DatasetDict's own splits are used unless `split` or `split_column` is given.
    Example: ``from_file("news.jsonl", text="body", label="topic", tokenizer=folder).num_labels``.
    """
    parts = read_table(path, _wanted(text, label, split_column), format)
    return _build(parts, text=text, label=label, tokenizer=tokenizer, split_column=split_column,
                  source=str(path), **options)


def from_csv(path: Union[str, Path], *, text: Text, label: str, tokenizer: Any, **options: Any) -> TextTaskData:
    """A CSV file (header row, comma-separated, UTF-8) as a TextTaskData; see `from_file`."""
    return from_file(path, text=text, label=label, tokenizer=tokenizer, format="csv", **options)


def from_tsv(path: Union[str, Path], *, text: Text, label: str, tokenizer: Any, **options: Any) -> TextTaskData:
    """A tab-separated file as a TextTaskData; see `from_file`."""
    return from_file(path, text=text, label=label, tokenizer=tokenizer, format="tsv", **options)


def from_jsonl(path: Union[str, Path], *, text: Text, label: str, tokenizer: Any, **options: Any) -> TextTaskData:
    """A JSON Lines file (one object per line) as a TextTaskData; see `from_file`."""
    return from_file(path, text=text, label=label, tokenizer=tokenizer, format="jsonl", **options)


def from_parquet(path: Union[str, Path], *, text: Text, label: str, tokenizer: Any, **options: Any) -> TextTaskData:
    """A Parquet file (needs pyarrow) as a TextTaskData; see `from_file`."""
    return from_file(path, text=text, label=label, tokenizer=tokenizer, format="parquet", **options)


def from_saved_dataset(path: Union[str, Path], *, text: Text, label: str, tokenizer: Any, **options: Any
                       ) -> TextTaskData:
    """A Hugging Face dataset saved with ``save_to_disk`` (needs datasets); see `from_file`."""
    return from_file(path, text=text, label=label, tokenizer=tokenizer, format="dataset", **options)


def from_dataframe(frame: Any, *, text: Text, label: str, tokenizer: Any, split_column: Optional[str] = None,
                   **options: Any) -> TextTaskData:
    """A pandas DataFrame as a TextTaskData. Example: ``from_dataframe(df, text="text", label="y", tokenizer=f)``."""
    columns = dataframe_columns(frame, _wanted(text, label, split_column))
    return _build({"all": columns}, text=text, label=label, tokenizer=tokenizer, split_column=split_column,
                  source="DataFrame", **options)


def from_hf_dataset(ds: Any, *, text: Text, label: str, tokenizer: Any, split_column: Optional[str] = None,
                    **options: Any) -> TextTaskData:
    """A Hugging Face ``Dataset`` or ``DatasetDict`` as a TextTaskData (a ClassLabel column keeps its names;
    a DatasetDict keeps its own train / validation / test unless `split` or `split_column` is given)."""
    parts = dataset_columns(ds, _wanted(text, label, split_column))
    names = class_names_of(ds, label)
    if names is not None and "classes" not in options:
        parts = {k: {**cols, label: [names[i] for i in cols[label]]} for k, cols in parts.items()}
        options["classes"] = names
    return _build(parts, text=text, label=label, tokenizer=tokenizer, split_column=split_column,
                  source=type(ds).__name__, **options)


def _build(parts: Mapping[str, dict], *, split_column: Optional[str], source: str, **options: Any) -> TextTaskData:
    if set(parts) == {"all"}:
        return build_text_data(parts["all"], split_column=split_column, source=source, **options)
    if options.get("split") is not None or split_column:  # re-split the joined splits as asked
        joined = {k: [v for part in parts.values() for v in part[k]] for k in next(iter(parts.values()))}
        return build_text_data(joined, split_column=split_column, source=source, **options)
    return build_text_data({}, given_splits=parts, source=source, **options)


# ---- arrays and loaders ------------------------------------------------------------------------------------------
def from_arrays(inputs: Union[np.ndarray, Mapping[str, np.ndarray]], labels: Sequence[Any], *,
                split: Optional[Mapping[str, float]] = None, split_values: Optional[Sequence[Any]] = None,
                classes: Optional[Sequence[str]] = None, batch_size: int = 16, eval_batch_size: int = 64,
                calibration_batch_size: int = 32, seed: int = 0) -> TaskData:
    """Numpy inputs (one array, or named arrays with examples on the first axis) and labels as a TaskData,
    split like the text tables (fractions per class, or a split value per row).

    Example: ``from_arrays({"pixel_values": x}, y, split={"test": 0.2}).extra["sizes"]["test"]``.
    """
    named = {ARRAY_KEY: inputs} if not isinstance(inputs, Mapping) else dict(inputs)
    named = {k: np.asarray(v) for k, v in named.items()}
    y, names = class_ids(list(labels), classes)
    rows = {len(v) for v in named.values()} | {len(y)}
    if len(rows) != 1:
        raise InvalidDataError(f"inputs and labels disagree on the number of examples: "
                               + ", ".join(f"{k} {len(v)}" for k, v in {**named, "labels": y}.items()))
    parts = split_rows(y, split, split_values, seed)
    splits = {k: ArraySplit({n: v[idx] for n, v in named.items()}, y[idx], idx) for k, idx in parts.items()}
    return task_data_from_splits(splits, num_labels=len(names), batch_size=batch_size,
                                 eval_batch_size=eval_batch_size, calibration_batch_size=calibration_batch_size,
                                 seed=seed, extra={"source": "arrays", "class_names": names,
                                                   "label_ids": {n: k for k, n in enumerate(names)}})


def to_numpy(value: Any) -> Any:
    """A tensor (torch, TensorFlow, Paddle, JAX), a dict or a list of them, as numpy arrays, without importing
    any framework: a tensor is detached and moved to the CPU when it can be, then asked for ``.numpy()``."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_numpy(v) for k, v in value.items()}
    for step in ("detach", "cpu"):  # torch: a tensor that requires grad, or lives on a GPU
        method = getattr(value, step, None)
        if callable(method):
            value = method()
    numpy = getattr(value, "numpy", None)
    if callable(numpy):
        return np.asarray(numpy())
    return np.asarray(value)


def split_batch(batch: Any, label_key: Optional[str] = None) -> tuple[Inputs, np.ndarray]:
    """(inputs, labels) numpy arrays of one loader batch: an (inputs, labels) pair, or a dict holding the labels
    under `label_key` (default: "labels", "label" or "y", the Hugging Face collators' names)."""
    if isinstance(batch, Mapping):
        keys = [label_key] if label_key else [k for k in ("labels", "label", "y") if k in batch]
        if not keys or keys[0] not in batch:
            raise InvalidDataError(f"a loader batch is a dict without labels (keys: {', '.join(map(str, batch))}); "
                                   "give label_key=")
        inputs = {k: v for k, v in batch.items() if k != keys[0]}
        return to_numpy(inputs), to_numpy(batch[keys[0]])
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return to_numpy(batch[0]), to_numpy(batch[1])
    raise InvalidDataError(f"a loader batch is a {type(batch).__name__}; batches are (inputs, labels) pairs or "
                           "dicts with a labels key")


def from_batches(train: Iterable[Any], *, evaluation: Optional[Iterable[Any]] = None,
                 calibration: Optional[Iterable[Any]] = None, num_labels: Optional[int] = None,
                 label_key: Optional[str] = None) -> TaskData:
    """Any iterable of (inputs, labels) batches as a TaskData: a torch ``DataLoader``, a ``tf.data.Dataset``, a
    ``paddle.io.DataLoader``, a list. Each call of ``train()`` iterates it afresh; a one-shot iterator (a
    generator) is read once and kept in memory. `num_labels` is counted from the labels when not given.

    Example: ``from_batches(torch_loader, evaluation=test_loader).num_labels``.
    """
    make_train = _replayable(train, label_key, "train")
    make_eval = _replayable(evaluation, label_key, "evaluation") if evaluation is not None else None
    make_cal = _replayable(calibration, label_key, "calibration", labelled=False) if calibration is not None else None
    if num_labels is None:  # one pass over the labels (a loader with a fixed order gives the same count each time)
        num_labels = 1 + max((int(np.max(y)) for _, y in make_train() if np.size(y)), default=-1)
    return TaskData(train=make_train, calibration=make_cal, evaluation=make_eval, num_labels=num_labels,
                    extra={"source": "batches"})


def _replayable(source: Iterable[Any], label_key: Optional[str], name: str, labelled: bool = True
                ) -> Callable[[], Iterator[Any]]:
    convert = (lambda b: split_batch(b, label_key)) if labelled else _calibration_inputs
    if iter(source) is source:  # a generator: it would be empty on the second pass
        kept = [convert(b) for b in source]
        if not kept:
            raise InvalidDataError(f"the {name} batches are empty")
        return lambda: iter(kept)
    return lambda: (convert(b) for b in source)


def _calibration_inputs(batch: Any) -> Inputs:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return to_numpy(batch[0])
    return to_numpy(batch)


__all__ = ["from_file", "from_csv", "from_tsv", "from_jsonl", "from_parquet", "from_saved_dataset",
           "from_dataframe", "from_hf_dataset", "from_arrays", "from_batches", "to_numpy", "split_batch"]
