"""Tables in the forms people have, read into plain columns (name -> list of values).

Files: CSV, TSV (the standard library's csv: every value stays the text it is), JSON Lines, Parquet (needs
pyarrow) and Hugging Face datasets saved with ``save_to_disk`` (needs datasets). Objects: a pandas
DataFrame, a Hugging Face ``Dataset`` or ``DatasetDict``. `table_columns` reads only the header (the first
line, the Parquet schema, the saved dataset's json), so a recipe's columns are checked without reading data.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..errors import InvalidDataError

#: file formats by name, and the suffixes that imply them
FORMATS = {"csv": (".csv",), "tsv": (".tsv", ".tab"), "jsonl": (".jsonl", ".ndjson"), "parquet": (".parquet", ".pq"),
           "dataset": ()}
#: a saved Hugging Face dataset folder holds one of these
DATASET_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")

Columns = dict[str, list]


class ColumnNotFoundError(InvalidDataError):
    """A column the data section names is not in the table (the message lists the table's columns)."""


def file_format(path: Union[str, Path], format: Optional[str] = None) -> str:
    """The format of `path`: `format` when given, else from the suffix or a saved-dataset folder.

    Example: ``file_format("news.tsv") == "tsv"``.
    """
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
        return format
    p = Path(path)
    if p.is_dir():
        if any((p / m).is_file() for m in DATASET_MARKERS):
            return "dataset"
        raise ValueError(f"{str(p)!r} is a folder but not a saved Hugging Face dataset (no "
                         f"{' / '.join(DATASET_MARKERS)} in it)")
    suffix = p.suffix.lower()
    for name, suffixes in FORMATS.items():
        if suffix in suffixes:
            return name
    raise ValueError(f"cannot tell the format of {str(p)!r} from its suffix {suffix!r}: name it .csv, .tsv, .jsonl "
                     "or .parquet, or give format:")


def table_columns(path: Union[str, Path], format: Optional[str] = None) -> list[str]:
    """The column names of a file, reading only its header. Raises FileNotFoundError naming a missing path."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no file {str(p)!r}")
    kind = file_format(p, format)
    if kind in ("csv", "tsv"):
        with open(p, newline="", encoding="utf-8-sig") as fh:
            return next(csv.reader(fh, delimiter="," if kind == "csv" else "\t"), [])
    if kind == "jsonl":
        with open(p, encoding="utf-8-sig") as fh:
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    return list(_json_row(line, p, number))
        return []
    if kind == "parquet":
        pq = _pyarrow_parquet()
        return list(pq.read_schema(str(p)).names)
    return _saved_dataset_columns(p)


def read_table(path: Union[str, Path], columns: Sequence[str], format: Optional[str] = None) -> dict[str, Columns]:
    """`columns` of a file, by split: ``{"all": {...}}``, or a saved DatasetDict's own splits.

    Example: ``read_table("news.csv", ["text", "label"])["all"]["label"][:2] == ["sport", "tech"]``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no file {str(p)!r}")
    kind = file_format(p, format)
    if kind in ("csv", "tsv"):
        return {"all": _read_delimited(p, columns, "," if kind == "csv" else "\t")}
    if kind == "jsonl":
        return {"all": _read_jsonl(p, columns)}
    if kind == "parquet":
        table = _pyarrow_parquet().read_table(str(p), columns=_known(columns, table_columns(p, kind), p))
        return {"all": {c: table.column(c).to_pylist() for c in columns}}
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("a saved Hugging Face dataset needs the datasets library: pip install datasets") from exc
    return dataset_columns(datasets.load_from_disk(str(p)), columns)


def dataset_columns(ds: Any, columns: Sequence[str]) -> dict[str, Columns]:
    """`columns` of a Hugging Face ``Dataset`` ({"all": ...}) or ``DatasetDict`` (one entry per split)."""
    if hasattr(ds, "column_names") and isinstance(ds.column_names, dict):  # DatasetDict
        return {name: _dataset_split(part, columns, name) for name, part in ds.items()}
    return {"all": _dataset_split(ds, columns, "dataset")}


def _dataset_split(ds: Any, columns: Sequence[str], where: str) -> Columns:
    _known(columns, list(ds.column_names), where)
    return {c: list(ds[c]) for c in columns}


def class_names_of(ds: Any, column: str) -> Optional[list[str]]:
    """The names of a Hugging Face ``ClassLabel`` column (its ids are already class ids), else None."""
    part = next(iter(ds.values())) if hasattr(ds, "column_names") and isinstance(ds.column_names, dict) else ds
    feature = getattr(part, "features", {}).get(column) if hasattr(part, "features") else None
    names = getattr(feature, "names", None)
    return list(names) if names else None


def dataframe_columns(frame: Any, columns: Sequence[str]) -> Columns:
    """`columns` of a pandas DataFrame as lists (missing values stay None/NaN for the builder to refuse)."""
    _known(columns, [str(c) for c in frame.columns], "the DataFrame")
    return {c: frame[c].tolist() for c in columns}


def _read_delimited(path: Path, columns: Sequence[str], delimiter: str) -> Columns:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # articles longer than the default 128 KiB field
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, [])
        _known(columns, header, path)
        where = [header.index(c) for c in columns]
        out: Columns = {c: [] for c in columns}
        for number, row in enumerate(reader, start=2):
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise ValueError(f"{path} line {number}: {len(row)} fields, the header has {len(header)} (an "
                                 "unquoted delimiter or newline in a text?)")
            for c, i in zip(columns, where):
                out[c].append(row[i])
    return out


def _read_jsonl(path: Path, columns: Sequence[str]) -> Columns:
    out: Columns = {c: [] for c in columns}
    with open(path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row = _json_row(line, path, number)
            missing = [c for c in columns if c not in row]
            if missing:
                raise ValueError(f"{path} line {number}: no {', '.join(map(repr, missing))} (keys: "
                                 f"{', '.join(map(repr, row))})")
            for c in columns:
                out[c].append(row[c])
    return out


def _json_row(line: str, path: Path, number: int) -> dict:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"{path} line {number} is not JSON: {exc}") from None
    if not isinstance(row, dict):
        raise ValueError(f"{path} line {number} is a JSON {type(row).__name__}; each line must be an object")
    return row


def _saved_dataset_columns(folder: Path) -> list[str]:
    info = folder / "dataset_info.json"
    if not info.is_file():  # a DatasetDict: the first split's folder
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        info = folder / splits[0] / "dataset_info.json" if splits else info
    features = json.loads(info.read_text()).get("features", {}) if info.is_file() else {}
    return list(features)


def _known(columns: Sequence[str], header: Sequence[str], where: Any) -> list[str]:
    missing = [c for c in columns if c not in header]
    if missing:
        raise ColumnNotFoundError(f"{where}: no column {', '.join(map(repr, missing))}; columns: "
                       f"{', '.join(map(repr, header[:20]))}{' ...' if len(header) > 20 else ''}")
    return list(columns)


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("Parquet files need pyarrow: pip install pyarrow") from exc
    return pq


__all__ = ["ColumnNotFoundError", "FORMATS", "file_format", "table_columns", "read_table", "dataset_columns", "dataframe_columns",
           "class_names_of"]
