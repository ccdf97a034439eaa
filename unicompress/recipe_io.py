"""Load and save recipes and specs as YAML or JSON, with one clear message per problem."""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from .errors import Problem, SpecValidationError
from .fileio import atomic_write_text
from .specs import STAGE_TYPES, Recipe, Stage

PathLike = Union[str, Path]
_stage_adapter: TypeAdapter = TypeAdapter(Stage)


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML (no Python objects) that refuses duplicate keys instead of keeping the last."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
        except TypeError:  # unhashable key: let pydantic complain about it
            continue
        if dup:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_text(text: str, source: str = "<string>") -> Any:
    """Parse YAML or JSON text (JSON is YAML) into plain Python data."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "the file"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecValidationError([Problem(where, text[:60], f"not valid YAML/JSON: {problem}")], source) from None
    except RecursionError:
        raise SpecValidationError([Problem("<root>", text[:60], "nesting too deep")], source) from None


def _loc_path(loc: tuple) -> str:
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in STAGE_TYPES:  # pydantic adds the discriminator value to the location
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _model_at(model: type[BaseModel], loc: tuple, data: Any) -> type[BaseModel] | None:
    """Walk `loc` through nested pydantic models to find the model that owns the last key."""
    current: Any = model
    node = data
    for item in loc[:-1]:
        if isinstance(item, int):
            node = node[item] if isinstance(node, list) and item < len(node) else None
            if isinstance(node, dict) and node.get("technique") in STAGE_TYPES:
                current = STAGE_TYPES[node["technique"]]
            continue
        if item in STAGE_TYPES:
            current = STAGE_TYPES[item]
            continue
        field = current.model_fields.get(item) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return None
        node = node.get(item) if isinstance(node, dict) else None
        current = _inner_model(field.annotation)
        if isinstance(node, dict) and node.get("technique") in STAGE_TYPES:
            current = STAGE_TYPES[node["technique"]]
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


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
    """Turn pydantic's errors into our Problems: path, value, what is allowed, 'did you mean'."""
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = _loc_path(loc)
        if err["type"] == "extra_forbidden":
            owner = _model_at(model, loc, data)
            known = list(owner.model_fields) if owner else []
            guess = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            allowed = f"unknown key; allowed keys: {', '.join(known)}" if known else "unknown key"
            if guess:
                allowed = f"unknown key (did you mean {guess[0]!r}?); allowed keys: {', '.join(known)}"
            out.append(Problem(path, loc[-1], allowed))
        elif err["type"] == "union_tag_invalid":
            tag = (err.get("ctx") or {}).get("tag")
            guess = difflib.get_close_matches(str(tag), list(STAGE_TYPES), n=1, cutoff=0.5)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            out.append(Problem(f"{path}.technique" if path else "technique", tag,
                               f"unknown technique{hint}; allowed: {', '.join(STAGE_TYPES)}"))
        elif err["type"] == "union_tag_not_found":
            out.append(Problem(f"{path}.technique" if path else "technique", None,
                               f"missing; each stage needs technique: one of {', '.join(STAGE_TYPES)}"))
        else:
            out.append(Problem(path, err.get("input"), _allowed_text(err)))
    return out


def validate_data(data: Any, model: type[BaseModel] = Recipe, source: str | None = None) -> Any:
    """Validate plain data as a Recipe (or any spec class); raises SpecValidationError listing every problem."""
    if model is Recipe and not isinstance(data, dict):
        raise SpecValidationError([Problem("<root>", data, "a recipe must be a mapping with a 'stages' list")], source)
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
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                    and source.endswith((".yaml", ".yml", ".json"))):
        path = Path(source)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except FileNotFoundError:
            raise SpecValidationError([Problem("<file>", str(path), "file not found")], str(path)) from None
    return str(source), "<string>"


def to_data(spec: BaseModel) -> dict:
    """Plain JSON-compatible data of a spec (enums as strings); loads back to an equal spec."""
    return spec.model_dump(mode="json")


def dump_text(spec: BaseModel, fmt: str = "yaml") -> str:
    """A spec as YAML or JSON text."""
    data = to_data(spec)
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
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
