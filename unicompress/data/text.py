"""A model's own tokenizer, loaded offline from its folder, and whether two tokenizers agree.

`load_tokenizer(folder)` reads the folder's ``tokenizer.json`` with the `tokenizers` library (no framework is
imported: transformers' AutoTokenizer imports torch, 5.5 s here) and takes the special tokens from
``tokenizer_config.json`` / ``special_tokens_map.json``. A folder without ``tokenizer.json`` (a SentencePiece
``spiece.model`` only, say) is loaded with ``AutoTokenizer.from_pretrained(folder, local_files_only=True)``.
An already loaded Hugging Face tokenizer or `tokenizers.Tokenizer` is accepted as it is.

Example::

    tok = load_tokenizer(minilm_folder)
    tok.encode(["Hello world"], max_length=8)[0].tolist() == [101, 7592, 2088, 102]
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

#: the special tokens whose ids must agree between two tokenizers that share inputs
SPECIAL_ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
#: text both tokenizers of `tokenizers_agree` encode: catches different lower-casing or accent stripping
PROBE_TEXT = "Hello World! Ça coûte 12,50 € — naïve résumé, 北京 2024."
#: positions when neither the tokenizer nor the model's config says (BERT's)
DEFAULT_MAX_LENGTH = 512

TokenizerLike = Union["TextTokenizer", str, Path, Any]


@dataclass(frozen=True)
class TextTokenizer:
    """One tokenizer behind one interface: `encode` texts (or pairs) into unpadded int64 id arrays.

    `special` maps roles (pad, cls, sep, ...) to ids; `pad_id` pads batches (the mask marks it anyway);
    `model_max_length` is the longest input the model takes; `source` says where it came from.
    """

    source: str
    backend: Any = field(repr=False)
    special: dict[str, int]
    model_max_length: int = DEFAULT_MAX_LENGTH

    @property
    def pad_id(self) -> int:
        """The padding id: the pad token, else the end-of-sequence token, else 0."""
        for role in ("pad", "eos", "sep"):
            if role in self.special:
                return self.special[role]
        return 0

    def vocab(self) -> dict[str, int]:
        """Token -> id, added tokens included."""
        return dict(self.backend.get_vocab())

    def encode(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None, max_length: Optional[int] = None
               ) -> list[np.ndarray]:
        """The ids of each text (with the model's special tokens), truncated to `max_length`, unpadded.

        `pairs` gives each text a second segment (the model's pair template, e.g. ``[CLS] a [SEP] b [SEP]``);
        truncation then cuts the longer segment first, as Hugging Face's ``tokenizer(a, b)`` does.
        """
        limit = min(max_length or self.model_max_length, self.model_max_length)
        texts = list(texts)
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pair segments")
        if _is_hf_tokenizer(self.backend):
            enc = self.backend(texts, list(pairs) if pairs is not None else None, truncation=True,
                               max_length=limit, padding=False)
            return [np.asarray(ids, dtype=np.int64) for ids in enc["input_ids"]]
        tok = self.backend  # a tokenizers.Tokenizer, configured per call (it is ours: a private copy)
        tok.no_padding()
        tok.enable_truncation(max_length=limit)
        batch = list(zip(texts, pairs)) if pairs is not None else texts
        return [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(batch)]


def load_tokenizer(source: TokenizerLike) -> TextTokenizer:
    """A `TextTokenizer` from a model folder (offline), a Hugging Face tokenizer, or a `tokenizers.Tokenizer`.

    Raises FileNotFoundError naming the folder when it holds no tokenizer.
    Example: ``load_tokenizer(minilm_path()).special["cls"] == 101``.
    """
    if isinstance(source, TextTokenizer):
        return source
    if isinstance(source, (str, Path)):
        return _from_folder(Path(source))
    if _is_hf_tokenizer(source):
        special = {role: int(getattr(source, f"{role}_token_id")) for role in SPECIAL_ROLES
                   if getattr(source, f"{role}_token_id", None) is not None}
        length = getattr(source, "model_max_length", DEFAULT_MAX_LENGTH)
        return TextTokenizer(getattr(source, "name_or_path", type(source).__name__), source, special,
                             length if 0 < length < 10**6 else DEFAULT_MAX_LENGTH)
    if hasattr(source, "encode_batch") and hasattr(source, "token_to_id"):  # tokenizers.Tokenizer
        import copy

        return TextTokenizer("tokenizers.Tokenizer", copy.deepcopy(source), _special_from_added(source))
    raise TypeError(f"cannot use a {type(source).__name__} as a tokenizer: give the model's folder, a Hugging Face "
                    "tokenizer or a tokenizers.Tokenizer")


def _from_folder(folder: Path) -> TextTokenizer:
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {str(folder)!r} does not exist (give the model's folder, with "
                                "tokenizer.json or tokenizer_config.json)")
    config = _read_json(folder / "tokenizer_config.json")
    names = {**_token_names(config), **_token_names(_read_json(folder / "special_tokens_map.json"))}
    max_length = _max_length(config, _read_json(folder / "config.json"))
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        special = {role: tok.token_to_id(name) for role, name in names.items() if tok.token_to_id(name) is not None}
        return TextTokenizer(str(folder), tok, special or _special_from_added(tok), max_length)
    if not (folder / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"tokenizer folder {str(folder)!r} holds neither tokenizer.json nor "
                                "tokenizer_config.json")
    from transformers import AutoTokenizer  # only for folders the tokenizers library cannot read

    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    found = load_tokenizer(hf)
    return TextTokenizer(str(folder), hf, found.special, max_length)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _token_names(config: dict) -> dict[str, str]:
    out = {}
    for role in SPECIAL_ROLES:
        value = config.get(f"{role}_token")
        if isinstance(value, dict):  # {"content": "[PAD]", "lstrip": false, ...}
            value = value.get("content")
        if isinstance(value, str):
            out[role] = value
    return out


def _max_length(config: dict, model_config: dict) -> int:
    length = config.get("model_max_length")
    if isinstance(length, int) and 0 < length < 10**6:  # transformers writes 1e30 for "no limit"
        return length
    positions = model_config.get("max_position_embeddings")
    return positions if isinstance(positions, int) and positions > 0 else DEFAULT_MAX_LENGTH


def _special_from_added(tok: Any) -> dict[str, int]:
    """Roles guessed from a bare tokenizer's special added tokens ("[PAD]", "<pad>", "</s>" ...)."""
    guesses = {"pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"), "cls": ("[CLS]", "<s>"),
               "sep": ("[SEP]", "</s>"), "mask": ("[MASK]", "<mask>"), "bos": ("<s>", "<|endoftext|>"),
               "eos": ("</s>", "<|endoftext|>")}
    out = {}
    for role, names in guesses.items():
        for name in names:
            if tok.token_to_id(name) is not None:
                out[role] = int(tok.token_to_id(name))
                break
    return out


def _is_hf_tokenizer(obj: Any) -> bool:
    # duck-typed so transformers is never imported to ask
    return callable(obj) and hasattr(obj, "get_vocab") and hasattr(obj, "convert_tokens_to_ids")


def tokenizer_differences(a: TokenizerLike, b: TokenizerLike) -> list[str]:
    """What differs between two tokenizers: vocabulary, special token ids, ids of a probe text ([] = agree).

    Example: ``tokenizer_differences(minilm, minilm) == []``.
    """
    ta, tb = load_tokenizer(a), load_tokenizer(b)
    out = []
    va, vb = ta.vocab(), tb.vocab()
    if va != vb:
        shared = sum(1 for k, v in va.items() if vb.get(k) == v)
        out.append(f"vocabularies differ ({len(va)} vs {len(vb)} tokens, {shared} with the same id)")
    roles = sorted(set(ta.special) | set(tb.special))
    wrong = [f"{r} {ta.special.get(r)} vs {tb.special.get(r)}" for r in roles if ta.special.get(r) != tb.special.get(r)]
    if wrong:
        out.append("special token ids differ: " + ", ".join(wrong))
    if not out:
        ia, ib = ta.encode([PROBE_TEXT])[0], tb.encode([PROBE_TEXT])[0]
        if ia.tolist() != ib.tolist():
            out.append(f"the same text gets different ids ({ia.tolist()[:8]} vs {ib.tolist()[:8]}): the "
                       "tokenizers normalise or split differently")
    return out


def tokenizers_agree(a: TokenizerLike, b: TokenizerLike) -> bool:
    """Whether two tokenizers give every text the same ids (same vocabulary, special ids and normalisation),
    so a teacher and a student can share one set of inputs.

    Example: ``tokenizers_agree(minilm_path(), minilm_path()) is True``.
    """
    return not tokenizer_differences(a, b)


__all__ = ["TextTokenizer", "load_tokenizer", "tokenizers_agree", "tokenizer_differences", "SPECIAL_ROLES"]
