"""Reading a dataset for an environment: the source, its column mapping, its prompt.

Shared by the environments' ``dataset`` modules and :mod:`envs.public_data`; see the latter for
what a source and a column mapping are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from align.data.errors import DataError
from align.data.loading import looks_local, read_rows
from envs.base import Message


def read_source(source: str) -> tuple[list[Any], list[int | None] | None]:
    """Raw rows and JSONL line numbers; a missing file or folder, or an unreachable Hub id, is a DataError."""
    path = Path(source).expanduser()
    if not path.exists() and looks_local(source):
        parent = next((p for p in path.parents if p.is_dir()), Path("."))
        raise DataError(f"{source}: no such file or folder (the nearest existing folder is {parent}/); check the path")
    if path.is_dir() and not any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        files = sorted(p.name for p in path.iterdir())[:8]
        raise DataError(
            f"{source}: a folder, but not one written by Dataset.save_to_disk (it holds {', '.join(files) or 'nothing'}); "
            "give a .jsonl/.parquet file inside it, or a save_to_disk folder"
        )
    try:
        return read_rows(str(path) if path.exists() else source)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets/huggingface_hub raise many kinds for a bad Hub id
        where = "reading it" if path.exists() else "it is not a local file or folder, and loading it as a Hub dataset"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"{source}: {where} failed: {type(e).__name__}: {first}") from None


def _column(row: dict[str, Any], column: str) -> Any:
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"column {column!r} is missing (the row has {', '.join(map(str, row)) or 'no columns'})")
        value = value[part]
    return value


def map_columns(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """``row`` with each mapped field set from its column; unmapped columns are kept as they are."""
    out = dict(row)
    for field_name, column in columns.items():
        out[field_name] = _column(row, column)
    return out


def prompt_messages(row: dict[str, Any], fields: tuple[str, ...] = ("prompt", "problem", "question")) -> list[Message]:
    """The first present prompt field as chat messages; a DataError names the field when it is unusable."""
    name = next((f for f in fields if row.get(f) is not None), None)
    if name is None:
        raise DataError(f"field 'prompt': missing (looked for {', '.join(fields)}); map your column with columns, e.g. prompt=text")
    value = row[name]
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and isinstance(m.get("content"), str) for m in value):
        return [{"role": str(m["role"]), "content": m["content"]} for m in value]
    raise DataError(f"field {name!r}: expected a non-empty string or a list of {{role, content}} messages, got {value!r:.80}")


