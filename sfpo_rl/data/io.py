"""Reading and writing record files (jsonl / json / parquet) with errors that name the file and the row."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(ValueError):
    """A data file or record that cannot be used; the message names the file, the line/row and the field."""


def read_rows(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(location, row) pairs: location is "line N" (1-based) for jsonl and "row N" (0-based) for parquet."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        return _read_parquet(path)
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(
            f"{path}: unsupported file type '{path.suffix}'; expected one of {', '.join(SUFFIXES)}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return _read_json_array(path, text)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        rows.append((f"line {number}", _require_object(row, path, f"line {number}")))
    return rows


def _read_json_array(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
    return [(f"element {i}", _require_object(row, path, f"element {i}")) for i, row in enumerate(rows)]


def _read_parquet(path: Path) -> list[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for corrupt or non-parquet files
        raise DataError(f"{path}: cannot read as parquet ({exc})") from exc
    return [(f"row {i}", row) for i, row in enumerate(rows)]


def _require_object(row: Any, path: Path, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{path}, {where}: expected a JSON object, got {type(row).__name__}")
    return row


def write_records(records: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write records as jsonl (or parquet when the name ends in .parquet); parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = list(records)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Columns from every record (from_pylist would take them from the first one only).
        columns = list(dict.fromkeys(key for record in records for key in record))
        pq.write_table(pa.table({key: [record.get(key) for record in records] for key in columns}), path)
    elif path.suffix in (".jsonl", ".json"):
        with path.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        raise DataError(f"{path}: unsupported output type '{path.suffix}'; use .jsonl or .parquet")
    return path
