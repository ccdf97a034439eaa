"""Capabilities: which spec values a backend honours, and how (natively or emulated)."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Iterator, Mapping

from ..errors import Problem


class Support(str, Enum):
    native = "native"  # done by the framework's own toolkit
    emulated = "emulated"  # done by unicompress with framework ops (e.g. fake-quant for log quantization)
    unsupported = "unsupported"


def _key(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


@dataclass(frozen=True)
class Capabilities:
    """A backend's table: technique -> field path -> value -> Support, plus free-text notes.

    Example::

        caps = Capabilities("torch", {"pruning": {"granularity": {"unstructured": Support.native}}})
        caps.support("pruning", "granularity", "unstructured")  # Support.native
    """

    backend: str
    table: Mapping[str, Mapping[str, Mapping[str, Support]]]
    notes: Mapping[str, str] = field(default_factory=dict)

    def support(self, technique: str, path: str, value: Any) -> Support:
        """How the backend supports `value` for spec field `path` of `technique`."""
        return self.table.get(technique, {}).get(path, {}).get(_key(value), Support.unsupported)

    def problems(self, spec: Any) -> list[Problem]:
        """One Problem per (field, value) of `spec` that this backend does not support."""
        technique = spec.technique
        out: list[Problem] = []
        if technique not in self.table:
            return [Problem("technique", technique, f"{self.backend} supports: {', '.join(sorted(self.table)) or 'nothing'}")]
        for path, value in spec.capability_items():
            if self.support(technique, path, value) is Support.unsupported:
                allowed = [v for v, s in self.table[technique].get(path, {}).items() if s is not Support.unsupported]
                out.append(Problem(f"{technique}.{path}", value,
                                   f"{self.backend} supports: {', '.join(allowed) if allowed else 'none'}"))
        return out

    def rows(self) -> Iterator[tuple[str, str, str, Support]]:
        """Every (technique, field, value, support) row, sorted, for tables and reports."""
        for technique in sorted(self.table):
            for path in sorted(self.table[technique]):
                for value in sorted(self.table[technique][path], key=_natural):
                    yield technique, path, value, self.table[technique][path][value]

    def claimed(self) -> set[tuple[str, str, str]]:
        """The (technique, field, value) triples this backend claims (native or emulated)."""
        return {(t, p, v) for t, p, v, s in self.rows() if s is not Support.unsupported}

    def to_text(self) -> str:
        """A compact human-readable listing, one line per field."""
        lines = []
        for technique in sorted(self.table):
            for path in sorted(self.table[technique]):
                vals = [f"{v}{'*' if s is Support.emulated else ''}"
                        for v, s in sorted(self.table[technique][path].items(), key=lambda kv: _natural(kv[0]))
                        if s is not Support.unsupported]
                lines.append(f"  {technique}.{path}: {', '.join(vals) if vals else '(none)'}")
        lines.append("  (* = emulated by unicompress with framework ops, not a native kernel)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"backend": self.backend, "notes": dict(self.notes),
                "table": {t: {p: {v: s.value for v, s in vals.items()} for p, vals in fields.items()}
                          for t, fields in self.table.items()}}


def _natural(value: str) -> tuple:
    return (0, int(value), "") if value.lstrip("-").isdigit() else (1, 0, value)


def build_table(entries: Iterable[tuple[str, str, Iterable[Any], Support]]) -> dict:
    """Build a table from (technique, field, values, support) rows; later rows override earlier ones."""
    table: dict[str, dict[str, dict[str, Support]]] = {}
    for technique, path, values, support in entries:
        for v in values:
            table.setdefault(technique, {}).setdefault(path, {})[_key(v)] = support
    return table
