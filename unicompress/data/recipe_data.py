"""A recipe's ``data: {path: ...}`` section: checked before work (reading only headers), then loaded.

`data_problems` is what ``unicompress validate`` and ``run`` refuse, one Problem per field: a missing file,
a format that cannot be told, a column the file lacks (its header only is read), a tokenizer folder that
does not exist, a max_length beyond the model's positions. `load_recipe_data` builds the TextTaskData.
Without ``tokenizer:`` a zoo BERT (minilm-l6, tiny-bert, user-encoder) uses MiniLM's own tokenizer, its ids
folded into the model's vocabulary when that is smaller (tiny-bert's 128). ``task: causal-lm`` reads a text
file (one document per line) or a table's text column(s) into packed token blocks (`unicompress.data.lm`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..errors import Problem
from .lm import TEXT_SUFFIXES
from .tables import file_format, table_columns

#: tokens per text when the data section does not say
DEFAULT_MAX_LENGTH = 128
#: zoo models whose default tokenizer is MiniLM's (tiny ones fold its ids into their vocabulary)
ZOO_TOKENIZED = ("minilm-l6", "tiny-bert", "user-encoder")


def default_tokenizer(model: Any) -> Optional[tuple[Path, Optional[int], int]]:
    """(tokenizer folder, vocab_size to fold into or None, max positions) of the recipe's zoo model, or None."""
    zoo = getattr(model, "zoo", None) if model is not None else None
    if zoo not in ZOO_TOKENIZED:
        return None
    from ..zoo import config_for
    from ..zoo.bert import MINILM_L6, minilm_path

    config = config_for(zoo)
    fold = config.vocab_size if config.vocab_size < MINILM_L6.vocab_size else None
    return minilm_path(), fold, config.max_position_embeddings


def data_problems(source: Any, model: Any = None) -> list[Problem]:
    """Why a ``path:`` data section cannot be loaded, found without reading the data ([] for other sources)."""
    if source is None or source.path is None:
        return []
    problems: list[Problem] = []
    path = Path(source.path)
    if not path.exists():
        return [Problem("data.path", source.path, f"no such file or folder (relative paths start at {Path.cwd()})")]
    if source.task == "causal-lm" and source.format is None and path.suffix.lower() in TEXT_SUFFIXES:
        return _tokenizer_problems(source, model)  # plain text: one document per line, no header to check
    try:
        kind = file_format(path, source.format)
        header = table_columns(path, kind)
    except (ValueError, OSError, ImportError) as exc:
        return [Problem("data.format" if source.format else "data.path", source.format or source.path, str(exc))]
    shown = ", ".join(header[:20]) + (" ..." if len(header) > 20 else "")
    labels = [source.label] if source.task != "causal-lm" else []  # a causal LM's labels are its next tokens
    for field_name, names in (("data.text", source.text or []), ("data.label", labels),
                              ("data.split_column", [source.split_column] if source.split_column else [])):
        for name in names:
            if name not in header:
                problems.append(Problem(field_name, name, f"is not a column of {source.path} (columns: {shown})"))
    problems += _tokenizer_problems(source, model)
    return problems


def _tokenizer_problems(source: Any, model: Any) -> list[Problem]:
    if source.tokenizer is not None:
        folder = Path(source.tokenizer)
        if not folder.is_dir():
            return [Problem("data.tokenizer", source.tokenizer, "no such folder (give the model's folder, with its "
                            "tokenizer.json or tokenizer_config.json)")]
        if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            return [Problem("data.tokenizer", source.tokenizer, "holds neither tokenizer.json nor "
                            "tokenizer_config.json")]
        return []
    try:
        found = default_tokenizer(model)
    except ImportError as exc:
        return [Problem("data.tokenizer", None, f"the zoo model's tokenizer is not installed: {exc}")]
    if found is None:
        return [Problem("data.tokenizer", None, "give the model's folder (tokenizer: path/to/model): only zoo BERTs "
                        f"({', '.join(ZOO_TOKENIZED)}) have a default")]
    _, _, positions = found
    if (source.max_length or DEFAULT_MAX_LENGTH) > positions:
        return [Problem("data.max_length", source.max_length or DEFAULT_MAX_LENGTH, f"the model {model.zoo} takes at most {positions} "
                        "positions")]
    return []


def load_recipe_data(source: Any, model: Any = None, seed: int = 0) -> Any:
    """The TextTaskData of a ``path:`` data section (`data_problems` first, so a bad field fails by name);
    `seed` (the recipe's) draws the split and the batch order unless ``kwargs: {seed: ...}`` says otherwise."""
    from ..errors import SpecValidationError
    from .sources import from_file

    problems = data_problems(source, model)
    if problems:
        raise SpecValidationError(problems, "the data: section")
    if source.task == "causal-lm":
        return _load_lm_data(source, model, seed)
    tokenizer, vocab_size = source.tokenizer, source.vocab_size
    if tokenizer is None:
        folder, fold, _ = default_tokenizer(model)
        tokenizer, vocab_size = folder, vocab_size if vocab_size is not None else fold
    split = source.split.model_dump() if source.split is not None else None
    given = {k: getattr(source, k) for k in ("task", "max_length", "batch_size", "eval_batch_size", "classes",
                                             "padding", "drop_duplicates") if getattr(source, k) is not None}
    options = {"max_length": DEFAULT_MAX_LENGTH, "seed": seed, **given, **source.kwargs}
    return from_file(source.path, format=source.format, text=source.text, label=source.label, tokenizer=tokenizer,
                     split=split, split_column=source.split_column, vocab_size=vocab_size, **options)


def _load_lm_data(source: Any, model: Any, seed: int) -> Any:
    """The LMTaskData of a ``task: causal-lm`` section (`unicompress.data.lm`: documents packed into blocks)."""
    from .lm import from_text

    tokenizer = source.tokenizer if source.tokenizer is not None else default_tokenizer(model)[0]
    split = source.split.model_dump() if source.split is not None else None
    given = {k: getattr(source, k) for k in ("max_length", "batch_size", "eval_batch_size")
             if getattr(source, k) is not None}
    options = {"max_length": DEFAULT_MAX_LENGTH, "seed": seed, **given, **source.kwargs}
    return from_text(source.path, tokenizer=tokenizer, text=source.text, format=source.format,
                     split_column=source.split_column, split=split, **options)


__all__ = ["data_problems", "load_recipe_data", "default_tokenizer", "ZOO_TOKENIZED"]
