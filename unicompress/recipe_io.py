"""Load and save recipes and specs as YAML or JSON, with one clear message per problem."""
from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from .errors import Problem, Shown, SpecValidationError, shown
from .fileio import atomic_write_text
from .specs import STAGE_TYPES, Recipe, Stage

PathLike = Union[str, Path]
_stage_adapter: TypeAdapter = TypeAdapter(Stage)

# Bounds on what a recipe may be, so that validating any input takes well under a second and a few MB
# (measured on a 2-core CPU: PyYAML composes 5,000 values in about 0.15 s; pydantic and the checks are far faster).
#: bytes of recipe text (a recipe of every stage with overrides and a declared structure is under 20 KB)
MAX_RECIPE_BYTES = 256 * 1024
#: values in a recipe, aliases counted at each use (a YAML "billion laughs" expands past this and stops)
MAX_NODES = 5_000
#: nesting of lists and mappings (a recipe needs under 10; deeper input is refused, not a RecursionError)
MAX_DEPTH = 50
#: bits of any integer in a recipe (seeds are at most 32 bits; this only stops absurd numbers early)
MAX_INT_BITS = 128
#: problems listed in one error (the rest are counted)
MAX_PROBLEMS = 50


class _Unusable(Exception):
    """Raised inside the bounded loader and the data walk; turned into a SpecValidationError."""


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML (no Python objects): refuses duplicate keys, accepts merge keys (``<<: *base``), and
    composes at most MAX_NODES values (aliases counted at each use) nested at most MAX_DEPTH deep."""

    def __init__(self, stream):
        super().__init__(stream)
        self._count = 0
        self._depth = 0
        self._open: set = set()  # anchors whose node is being composed (an alias to one recurses)
        self._sizes: dict = {}  # anchor -> values it expands to

    def fetch_flow_collection_start(self, TokenClass):
        # Refused in the scanner: it looks ahead over every open flow level, quadratic in their number.
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def _add(self, n: int, mark) -> None:
        self._count += n
        if self._count > MAX_NODES:
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_NODES:,} values (aliases counted at "
                                              "each use): too large for a recipe", mark)

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            if event.anchor in self._open:
                raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} refers to itself",
                                                  event.start_mark)
            self._add(self._sizes.get(event.anchor, 1), event.start_mark)
            return super().compose_node(parent, index)
        event = self.peek_event()
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        start = self._count
        self._add(1, event.start_mark)
        anchor = event.anchor
        if anchor is not None:
            self._open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.discard(anchor)
                self._sizes[anchor] = self._count - start


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    # A key written twice is refused; keys brought in by a merge key (``<<``) may be overridden, as YAML says.
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
            seen.add(key)
        except TypeError:  # unhashable key (a list, a !!set): construct_mapping refuses it below
            continue
        if dup:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {shown(key)!r}", key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _json_pairs(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_text(text: str, source: str = "<string>") -> Any:
    """Parse YAML or JSON text into plain Python data, within the bounds above.

    JSON text is read as JSON first (so ``"\\ud83d\\ude00"`` escapes and ``1e5`` mean what JSON says);
    anything else, or JSON that fails, as safe YAML. Errors say where (line, column) and never show the
    text itself: the file may be no recipe at all.
    """
    if len(text) > MAX_RECIPE_BYTES:
        raise SpecValidationError([Problem("<file>", Shown(f"{len(text):,} characters"),
                                           f"too large for a recipe (at most {MAX_RECIPE_BYTES:,})")], source)
    if text.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(text, object_pairs_hook=_json_pairs)
        except (ValueError, RecursionError):
            pass  # YAML flow style, or broken: the YAML parser says where
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<file>"
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise SpecValidationError([Problem(where, Shown("unparsable text"), f"not valid YAML/JSON: {problem}")],
                                  source) from None
    except (RecursionError, ValueError, OverflowError, MemoryError) as exc:
        # ValueError: an integer of more digits than Python converts (4,300)
        why = "nesting too deep" if isinstance(exc, RecursionError) else "a value too large to convert"
        raise SpecValidationError([Problem("<file>", Shown("unparsable text"), f"not a usable recipe: {why}")],
                                  source) from None


def _check_bounds(data: Any) -> None:
    """Refuse data a recipe cannot be, before pydantic walks it: too many values (shared references counted
    at each use), too deep, self-referring, absurdly large integers or strings, or strings that are no text."""
    count = 0
    inside: set = set()
    where: list[str] = []

    def fail(got: str, allowed: str) -> None:
        raise _Unusable(Problem("".join(where).lstrip(".") or "<root>", Shown(got), allowed))

    def walk(value: Any, depth: int) -> None:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            fail(f"more than {MAX_NODES:,} values", "too large for a recipe (shared references count at each use)")
        if isinstance(value, (dict, list, tuple, set, frozenset)):
            if depth >= MAX_DEPTH:
                fail(f"more than {MAX_DEPTH} levels of nesting", "too deep for a recipe")
            if id(value) in inside:
                fail("a list or mapping that contains itself", "a recipe is a tree of plain values")
            inside.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                where.append(f".{shown(key)}" if isinstance(value, dict) else f"[{key}]")
                if isinstance(value, dict):
                    walk(key, depth + 1)
                walk(item, depth + 1)
                where.pop()
            inside.discard(id(value))
        elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
            fail(f"an integer of {value.bit_length()} bits", f"integers in a recipe have at most {MAX_INT_BITS} bits")
        elif isinstance(value, (str, bytes)) and len(value) > MAX_RECIPE_BYTES:
            fail(f"a string of {len(value):,} characters", f"at most {MAX_RECIPE_BYTES:,} characters")
        elif isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                fail("a string with a lone surrogate", "text only (half of a \\u escaped pair is no character)")

    walk(data, 0)


def _loc_path(loc: tuple) -> str:
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in STAGE_TYPES:  # pydantic adds the discriminator value to the location
            continue
        else:
            text = str(item)
            parts.append(("." if parts else "") + (text if len(text) <= 60 else text[:57] + "..."))
    return "".join(parts)


def _model_at(model: type[BaseModel], loc: tuple, data: Any) -> type[BaseModel] | None:
    """Walk `loc` through nested pydantic models to find the model that owns the last key."""
    current: Any = model
    node = data
    for item in loc[:-1]:
        if isinstance(item, int):
            node = node[item] if isinstance(node, list) and item < len(node) else None
            current = _stage_type(node) or current
            continue
        if item in STAGE_TYPES:
            current = STAGE_TYPES[item]
            continue
        field = current.model_fields.get(item) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return None
        node = node.get(item) if isinstance(node, dict) else None
        current = _stage_type(node) or _inner_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _stage_type(node: Any) -> type[BaseModel] | None:
    """The spec class a stage mapping names with `technique` (None when it names none, or not a string)."""
    technique = node.get("technique") if isinstance(node, dict) else None
    return STAGE_TYPES.get(technique) if isinstance(technique, str) else None


def _inner_model(annotation: Any) -> Any:
    args = getattr(annotation, "__args__", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for a in args or ():
        inner = _inner_model(a)
        if inner is not None:
            return inner
    return None


def _allowed_text(err: dict) -> str:
    ctx = err.get("ctx") or {}
    kind = err["type"]
    if kind == "enum":
        return f"allowed: {ctx.get('expected')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")), "?")
        return f"must be {op} {bound}"
    if kind == "literal_error":
        return f"allowed: {ctx.get('expected')}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return err["msg"].removeprefix("Value error, ")


def problems_from(exc: ValidationError, model: type[BaseModel], data: Any) -> list[Problem]:
    """Turn pydantic's errors into our Problems: path, value, what is allowed, 'did you mean'.

    Values are shown through `errors.shown` (small scalars as they are, containers by their size), and at most
    MAX_PROBLEMS are listed, the rest counted in a last entry.
    """
    out = []
    errors = exc.errors(include_url=False)
    for err in errors[:MAX_PROBLEMS]:
        loc = tuple(err["loc"])
        path = _loc_path(loc)
        if err["type"] == "extra_forbidden":
            owner = _model_at(model, loc, data)
            known = list(owner.model_fields) if owner else []
            guess = difflib.get_close_matches(str(loc[-1])[:100], known, n=1, cutoff=0.6)
            allowed = f"unknown key; allowed keys: {', '.join(known)}" if known else "unknown key"
            if guess:
                allowed = f"unknown key (did you mean {guess[0]!r}?); allowed keys: {', '.join(known)}"
            out.append(Problem(path, shown(loc[-1]), allowed))
        elif err["type"] == "union_tag_invalid":
            tag = (err.get("ctx") or {}).get("tag")
            guess = difflib.get_close_matches(str(tag)[:100], list(STAGE_TYPES), n=1, cutoff=0.5)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            out.append(Problem(f"{path}.technique" if path else "technique", shown(tag),
                               f"unknown technique{hint}; allowed: {', '.join(STAGE_TYPES)}"))
        elif err["type"] == "union_tag_not_found":
            out.append(Problem(f"{path}.technique" if path else "technique", None,
                               f"missing; each stage needs technique: one of {', '.join(STAGE_TYPES)}"))
        elif err["type"] == "missing":
            out.append(Problem(path, Shown("nothing"), _allowed_text(err)))
        else:
            out.append(Problem(path, shown(err.get("input")), _allowed_text(err)))
    if len(errors) > MAX_PROBLEMS:
        out.append(Problem("...", Shown(f"{len(errors) - MAX_PROBLEMS} more problem(s)"), "not listed"))
    return out


def validate_data(data: Any, model: type[BaseModel] = Recipe, source: str | None = None) -> Any:
    """Validate plain data as a Recipe (or any spec class); raises SpecValidationError listing every problem.

    Data beyond the bounds of this module (MAX_NODES values, MAX_DEPTH levels, MAX_INT_BITS-bit integers) is
    refused before it is walked, so validation stays fast whatever it is given.
    """
    try:
        _check_bounds(data)
    except _Unusable as exc:
        raise SpecValidationError([exc.args[0]], source) from None
    if model is Recipe and not isinstance(data, dict):
        # the type only: a file that is no recipe may hold anything (its text is never echoed)
        raise SpecValidationError([Problem("<root>", Shown(f"a {type(data).__name__}"),
                                           "a recipe must be a mapping with a 'stages' list")], source)
    try:
        if model is Stage:
            return _stage_adapter.validate_python(data)
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecValidationError(problems_from(exc, model if model is not Stage else Recipe, data), source) from None
    except (RecursionError, OverflowError, MemoryError) as exc:
        raise SpecValidationError([Problem("<root>", type(exc).__name__, "input too deep or too large")], source) from None


def load_recipe(source: Union[PathLike, dict]) -> Recipe:
    """Load and validate a recipe from a YAML/JSON file path, YAML/JSON text, or a dict.

    Example: ``recipe = load_recipe("examples/int8_static.yaml")``.
    """
    if isinstance(source, dict):
        return validate_data(source, Recipe, "<dict>")
    text, where = _read(source)
    return validate_data(parse_text(text, where), Recipe, where)


def load_stage(source: Union[PathLike, dict]):
    """Load one spec (a stage) from a file, text or dict; `technique` picks its type."""
    if isinstance(source, dict):
        return validate_data(source, Stage, "<dict>")  # type: ignore[arg-type]
    text, where = _read(source)
    return validate_data(parse_text(text, where), Stage, where)  # type: ignore[arg-type]


def _read(source: PathLike) -> tuple[str, str]:
    """The text of a recipe file (or `source` itself when it is recipe text), and where it came from.

    Every way a path can fail (missing, a directory, unreadable, too large, not UTF-8) is a SpecValidationError
    naming the path; the file's content is never shown.
    """
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                    and source.endswith((".yaml", ".yml", ".json"))):
        path = Path(source)
        where = str(path)

        def refuse(why: str) -> SpecValidationError:
            return SpecValidationError([Problem("<file>", shown(where), why)], where)

        try:
            if path.is_dir():
                raise refuse("is a directory, not a recipe file")
            with open(path, "rb") as fh:
                raw = fh.read(MAX_RECIPE_BYTES + 1)
        except FileNotFoundError:
            raise refuse("file not found") from None
        except PermissionError:
            raise refuse("permission denied: the file cannot be read") from None
        except OSError as exc:
            raise refuse(f"cannot be read: {exc.strerror or type(exc).__name__}") from None
        if len(raw) > MAX_RECIPE_BYTES:
            raise refuse(f"larger than {MAX_RECIPE_BYTES:,} bytes: too large for a recipe file")
        try:
            return raw.decode("utf-8-sig"), where
        except UnicodeDecodeError as exc:
            raise refuse(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): "
                         "not a recipe file") from None
    return str(source), "<string>"


class _Dumper(yaml.SafeDumper):
    """Safe YAML whose strings load back exactly: text YAML would read differently is double-quoted (escaped)."""


#: characters YAML reads as line breaks or byte-order marks, and control characters (all escaped when quoted)
_NEEDS_QUOTES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff]")


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if _NEEDS_QUOTES.search(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def to_data(spec: BaseModel) -> dict:
    """Plain JSON-compatible data of a spec (enums as strings); loads back to an equal spec."""
    return spec.model_dump(mode="json")


def dump_text(spec: BaseModel, fmt: str = "yaml") -> str:
    """A spec as YAML or JSON text."""
    data = to_data(spec)
    if fmt == "json":
        # the characters themselves, not \\u escapes (a surrogate pair escape is one character in JSON only)
        return json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    raise ValueError(f"format must be 'yaml' or 'json', got {fmt!r}")


def save_recipe(recipe: BaseModel, path: PathLike) -> Path:
    """Write a recipe (or any spec) to a .yaml/.yml/.json file atomically; returns the path."""
    path = Path(path)
    fmt = "json" if path.suffix == ".json" else "yaml"
    atomic_write_text(path, dump_text(recipe, fmt))
    return path


def recipe_schema() -> dict:
    """The JSON Schema of a recipe file, for editors (``unicompress schema > recipe.schema.json``)."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "unicompress recipe"
    return schema
