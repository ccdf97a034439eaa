"""Teacher and student with different tokenizers: each gets its own token ids of the same texts.

The contract (documented for the adapters' distillation):
  - ``data.extra["tokenizers_agree"]`` is True when the teacher can read the student's inputs, False when not;
  - when False, ``data.extra["teacher_data"]`` is a TaskData over the very same rows, in the same order, whose
    input dicts hold the student's arrays plus the teacher's under ``teacher_`` names (``teacher_input_ids``,
    ``teacher_attention_mask``, each padded to its own longest row). A distillation handler trains on it and
    splits each batch with `split_teacher_inputs`: the student gets the plain keys, the teacher the others;
  - only response distillation (logits) is defined across tokenizers: token positions of two tokenizations do
    not line up, so feature and relation losses are refused (`distillation_problems`).
`check_teacher_inputs` and `distillation_problems` refuse before work what cannot be resolved: tokenizers
that differ while the data carries no teacher inputs (ids without the texts they came from). Given the two
models' token-embedding sizes (`word_embedding_rows`), `distillation_problems` also refuses a teacher whose
vocabulary differs from the student's when the data has no teacher inputs (the data may not know the teacher's
tokenizer, but the embeddings do), and teacher inputs holding ids beyond the teacher's vocabulary.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from ..errors import UnicompressError
from .text import TokenizerLike, load_tokenizer, tokenizer_differences

if TYPE_CHECKING:
    from ..backend.types import TaskData
    from .builder import TextTaskData

#: prefix of the teacher's inputs inside a batch of ``extra["teacher_data"]``
TEACHER_PREFIX = "teacher_"


class TokenizerMismatchError(UnicompressError, ValueError):
    """Teacher and student tokenize differently and the data cannot give the teacher its own inputs."""


def attach_teacher(data: "TextTaskData", teacher_tokenizer: TokenizerLike,
                   student_tokenizer: Optional[TokenizerLike] = None) -> "TextTaskData":
    """Record whether `teacher_tokenizer` agrees with the data's tokenizer and, when not, tokenize the same
    texts for the teacher (``extra["teacher_data"]``). Returns `data` (changed in place).

    Example: ``attach_teacher(from_csv("n.csv", text="t", label="y", tokenizer=s), t).extra["tokenizers_agree"]``.
    """
    from .builder import TextTaskData

    if not isinstance(data, TextTaskData):
        raise TypeError("attach_teacher needs data built from texts (unicompress.data.from_csv, from_dataframe, ...)")
    student = load_tokenizer(student_tokenizer if student_tokenizer is not None else data.extra["tokenizer"])
    teacher = load_tokenizer(teacher_tokenizer)
    differences = tokenizer_differences(student, teacher)
    data.extra.update(teacher_tokenizer=teacher.source, tokenizers_agree=not differences,
                      tokenizer_differences=differences)
    data.extra.pop("teacher_data", None)
    if not differences:
        return data  # one set of inputs serves both
    length = min(int(data.extra.get("max_length") or teacher.model_max_length), teacher.model_max_length)
    splits = {name: part.with_ids("teacher", teacher.encode(part.texts, part.pairs, length))
              for name, part in data.token_splits.items()}
    extra = {k: v for k, v in data.extra.items() if k not in ("validation", "sizes")}
    extra["splits"] = splits
    data.extra["teacher_data"] = TextTaskData(num_labels=data.num_labels, task=data.task, extra=extra,
                                              token_splits=splits, pad_ids={**data.pad_ids, "teacher": teacher.pad_id},
                                              seed=data.seed, pad_to=data.pad_to, vocab_size=data.vocab_size,
                                              window=data.window, with_teacher=True)
    return data


def split_teacher_inputs(inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(student inputs, teacher inputs) of one batch: ``teacher_*`` keys go to the teacher (prefix removed);
    without any, both get the same inputs; an input that is no mapping (one array) goes to both.

    Example: ``split_teacher_inputs({"input_ids": a, "teacher_input_ids": b}) == ({"input_ids": a},
    {"input_ids": b})``.
    """
    if not isinstance(inputs, Mapping):  # one unnamed input (an array or tensor): both models read it
        return inputs, inputs
    student = {k: v for k, v in inputs.items() if not k.startswith(TEACHER_PREFIX)}
    teacher = {k[len(TEACHER_PREFIX):]: v for k, v in inputs.items() if k.startswith(TEACHER_PREFIX)}
    return student, (teacher or student)


def distillation_data(data: Optional["TaskData"]) -> Optional["TaskData"]:
    """The data a distillation handler trains on: ``extra["teacher_data"]`` (the same rows, with the teacher's
    own ids as ``teacher_*`` inputs) when the teacher tokenizes differently, else `data` itself."""
    if data is None:
        return None
    teacher_data = data.extra.get("teacher_data")
    return teacher_data if teacher_data is not None else data


def has_teacher_inputs(data: Optional["TaskData"]) -> bool:
    """Whether `data` carries teacher inputs of its own (``extra["teacher_data"]``)."""
    return data is not None and data.extra.get("teacher_data") is not None


def check_teacher_inputs(data: Optional["TaskData"], teacher_tokenizer: TokenizerLike,
                         student_tokenizer: Optional[TokenizerLike] = None) -> None:
    """Refuse (TokenizerMismatchError) a distillation whose teacher tokenizes differently from the student
    when the data cannot give the teacher its own ids. Passes when the tokenizers agree, or when the data's
    ``teacher_data`` was made with this very teacher tokenizer.

    `student_tokenizer` defaults to the one the data was built with (``extra["tokenizer"]``).
    """
    student = student_tokenizer if student_tokenizer is not None else (data.extra.get("tokenizer") if data else None)
    if student is None:
        raise TokenizerMismatchError("cannot tell the student's tokenizer: give student_tokenizer= (the data was "
                                     "not built from texts)")
    differences = tokenizer_differences(student, teacher_tokenizer)
    if not differences:
        return
    if has_teacher_inputs(data) and not tokenizer_differences(data.extra["teacher_tokenizer"], teacher_tokenizer):
        return
    raise TokenizerMismatchError(
        "distillation refused before work: the teacher's tokenizer differs from the student's ("
        + "; ".join(differences) + ") and the data carries no teacher inputs, so the teacher would read the "
        "student's token ids as its own. Build the data from the texts with both tokenizers, e.g. "
        "unicompress.data.from_csv(path, text=..., label=..., tokenizer=student_folder, "
        "teacher_tokenizer=teacher_folder), or use a teacher with the student's tokenizer")


#: substrings naming a model's token embedding (BERT-style, Llama-style, GPT-2, T5) among its layers
_TOKEN_EMBEDDING_NAMES = ("word_embeddings", "embed_tokens", "wte", "tok_embeddings", "shared")


def word_embedding_rows(layers: Sequence[Any]) -> Optional[int]:
    """Rows of a model's token embedding (its vocabulary size) from an adapter's `layers()` rows, or None
    when no token embedding can be told apart (then nothing is checked).

    Example: ``word_embedding_rows(get_backend("torch").layers(bert)) == bert.config.vocab_size``.
    """
    embeds = [layer for layer in layers if getattr(layer, "kind", "") == "embedding" and len(layer.shape) == 2]
    named = [layer for layer in embeds if any(k in layer.name for k in _TOKEN_EMBEDDING_NAMES)]
    pick = named or (embeds if len(embeds) == 1 else [])
    return int(pick[0].shape[0]) if pick else None


def _largest_teacher_id(data: "TaskData") -> Optional[int]:
    """The largest token id the teacher inputs of `data` hold (None when they are not token splits)."""
    splits = getattr(data.extra.get("teacher_data"), "token_splits", None) or {}
    tops = [int(ids.max()) for part in splits.values() for ids in part.extra_ids.get("teacher", ()) if len(ids)]
    return max(tops) if tops else None


def distillation_problems(stages: Sequence[Any], data: Optional["TaskData"], student_rows: Optional[int] = None,
                          teacher_rows: Optional[int] = None) -> list[str]:
    """Why the distillation stages cannot run on `data` as far as tokenizers go ([] when they can):
    the data says the tokenizers differ but carries no teacher inputs, or a feature/relation loss would
    compare token positions of two different tokenizations. `student_rows` / `teacher_rows` (the models'
    token-embedding rows, `word_embedding_rows`) add: vocabularies of different sizes without teacher inputs,
    and teacher inputs with ids the teacher's embedding does not have."""
    if data is None:
        return []
    out = [] if data.extra.get("tokenizers_agree", True) else _tokenizer_problems(stages, data)
    if teacher_rows is None:
        return out
    for i, stage in enumerate(stages):
        if getattr(stage, "technique", None) != "distillation":
            continue
        top = _largest_teacher_id(data) if has_teacher_inputs(data) else None
        if top is not None and top >= teacher_rows:
            out.append(f"stages[{i}] (distillation): the teacher inputs hold token id {top}, but the teacher's "
                       f"token embedding has {teacher_rows} rows: the data's teacher_tokenizer "
                       f"({data.extra.get('teacher_tokenizer')}) is not the teacher's")
        elif not has_teacher_inputs(data) and student_rows is not None and student_rows != teacher_rows:
            out.append(f"stages[{i}] (distillation): the teacher's token embedding has {teacher_rows} rows and the "
                       f"student's {student_rows}: they read different vocabularies, and the data carries no "
                       "teacher inputs, so the teacher would read the student's token ids as its own. Build the "
                       "data from the texts with both tokenizers (unicompress.data.from_csv(..., tokenizer="
                       "student_folder, teacher_tokenizer=teacher_folder)) or use a teacher with the student's "
                       "tokenizer")
    return out


def _tokenizer_problems(stages: Sequence[Any], data: "TaskData") -> list[str]:
    """`distillation_problems` for data that says its tokenizers differ (``extra["tokenizers_agree"]`` False)."""
    out = []
    for i, stage in enumerate(stages):
        if getattr(stage, "technique", None) != "distillation":
            continue
        if not has_teacher_inputs(data):
            out.append(f"stages[{i}] (distillation): the teacher's tokenizer differs from the student's and the "
                       "data carries no teacher inputs (extra['teacher_data'])")
        kinds = sorted(str(getattr(k, "value", k)) for k in stage.kinds if str(getattr(k, "value", k)) != "response")
        if kinds:
            out.append(f"stages[{i}] (distillation): kinds {kinds} compare token positions, which differ between "
                       "the teacher's and the student's tokenizations; use kinds: [response]")
    return out


def check_distillation_data(stages: Sequence[Any], data: Optional["TaskData"], student_rows: Optional[int] = None,
                            teacher_rows: Optional[int] = None) -> None:
    """`distillation_problems`, raised as one TokenizerMismatchError (for the core's checks before work)."""
    problems = distillation_problems(stages, data, student_rows, teacher_rows)
    if problems:
        raise TokenizerMismatchError("distillation refused before work:\n" + "\n".join(f"  - {p}" for p in problems))


__all__ = ["TEACHER_PREFIX", "TokenizerMismatchError", "attach_teacher", "split_teacher_inputs",
           "has_teacher_inputs", "check_teacher_inputs", "distillation_problems", "check_distillation_data",
           "word_embedding_rows", "distillation_data"]
