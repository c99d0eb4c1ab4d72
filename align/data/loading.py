"""Rows from files and datasets, and the train/eval split.

Sources, by what ``path_or_name`` is:

- ``*.jsonl`` / ``*.json`` (optionally ``.gz``): read here, one JSON object per line (or one
  JSON list). Not through ``datasets``: its JSON loader unifies a schema over all rows, so
  one row with a wrong type fails the whole file with a pyarrow message and no row number,
  and missing keys come back as ``None``. Reading line by line keeps each row as written and
  lets a bad row be named by its index and line.
- ``*.parquet`` / ``*.arrow`` / ``*.csv``: ``datasets.load_dataset`` with the matching builder.
- a folder written by ``Dataset.save_to_disk``: ``datasets.load_from_disk``.
- any other folder, or a hub name (``org/name``): ``datasets.load_dataset(path_or_name, split=...)``.
  Hub names need network access (or the ``datasets`` cache); nothing is downloaded in tests.

Parquet/Arrow rows come back with ``None`` for absent keys; the row checks treat ``None`` as
absent. Everything is loaded into memory as Python dicts: fine for SFT/DPO/RM data sets up
to a few million short rows, not for pretraining-scale corpora.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from align.data.errors import DataError, OnBadRow, check_rows

_JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
# Splits tried, in order, for an eval set given as a dataset with several splits.
EVAL_SPLITS: tuple[str, ...] = ("validation", "test", "eval", "train")


class InvalidJson:
    """Stands in for a JSON line that does not parse, so later rows keep their indices."""

    def __init__(self, reason: str):
        self.reason = reason


def _suffix(path: str) -> str:
    name = path.lower()
    for s in (*_JSON_SUFFIXES, *_BUILDERS):
        if name.endswith(s):
            return s
    return ""


def _read_json_file(path: Path) -> tuple[list[Any], list[int | None]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON: {e}") from None
        return list(rows), [None] * len(rows)
    rows, lines = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            rows.append(InvalidJson(f"invalid JSON ({e.msg} at column {e.colno})"))
        lines.append(lineno)
    return rows, lines


def _pick_split(available: Sequence[str], split: str | Sequence[str], source: str) -> str:
    wanted = [split] if isinstance(split, str) else list(split)
    for s in wanted:
        if s in available:
            return s
    raise DataError(f"{source} has no split {' or '.join(map(repr, wanted))} (available: {', '.join(available)})")


def _read_with_datasets(path_or_name: str, split: str | Sequence[str]) -> list[Any]:
    import datasets  # slow import; only for these sources

    local = Path(path_or_name)
    suffix = _suffix(path_or_name)
    if suffix in _BUILDERS:
        ds = datasets.load_dataset(_BUILDERS[suffix], data_files=str(local), split="train")
    elif local.is_dir() and any((local / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[_pick_split(list(loaded), split, path_or_name)]
        ds = loaded
    else:
        if not isinstance(split, str):
            split = _pick_split(datasets.get_dataset_split_names(path_or_name), split, path_or_name)
        ds = datasets.load_dataset(path_or_name, split=split)
    return ds.to_list()


def _read(path_or_name: str, split: str | Sequence[str]) -> tuple[list[Any], list[int | None] | None]:
    """Raw rows (``InvalidJson`` for unparseable lines) and, for JSONL, each row's line number."""
    suffix = _suffix(path_or_name)
    path = Path(path_or_name)
    if suffix and not path.exists():
        raise FileNotFoundError(f"data file not found: {path_or_name}")
    if path.is_file() and not suffix:
        raise DataError(f"{path_or_name}: unsupported file type; use .jsonl, .json, .parquet, .arrow or .csv, or a dataset folder")
    if suffix in _JSON_SUFFIXES:
        rows, lines = _read_json_file(path)
        return rows, lines if any(x is not None for x in lines) else None
    return _read_with_datasets(path_or_name, split), None


def read_rows(path_or_name: str, split: str | Sequence[str] = "train") -> tuple[list[Any], list[int | None] | None]:
    """Raw rows as read (``InvalidJson`` for a line that does not parse) and, for JSONL, each row's
    line number: for callers that run their own per-row conversion through :func:`check_rows`."""
    return _read(path_or_name, split)


def load_rows(path_or_name: str, split: str | Sequence[str] = "train") -> list[dict[str, Any]]:
    """Every row of a file, folder or hub dataset, as dicts; raise :class:`DataError` on a non-object row.

    ``split`` selects a split of a folder or hub dataset (a sequence: the first that exists);
    a single file is one split and ignores it. Rows are not checked against a shape here; see
    :func:`load_checked_rows`.
    """
    rows, lines = _read(path_or_name, split)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            reason = row.reason if isinstance(row, InvalidJson) else f"the row is a {type(row).__name__}, expected an object"
            raise DataError(reason, index=i, source=path_or_name, line=lines[i] if lines else None)
    return rows


def load_checked_rows(
    path_or_name: str,
    check: Callable[[Any], None],
    *,
    split: str | Sequence[str] = "train",
    on_bad_row: OnBadRow = "error",
) -> tuple[list[dict[str, Any]], int]:
    """Rows that pass ``check`` (one of :mod:`align.data.validate`'s) and the number skipped.

    Unparseable JSON lines count as bad rows too: an error names their line, skip mode skips them.
    """
    rows, lines = _read(path_or_name, split)

    def check_one(row: Any) -> None:
        if isinstance(row, InvalidJson):
            raise DataError(row.reason)
        check(row)

    return check_rows(rows, check_one, source=path_or_name, on_bad_row=on_bad_row, lines=lines)


def train_eval_split(rows: Sequence[dict[str, Any]], eval_fraction: float, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out ``round(len(rows) * eval_fraction)`` rows (at least one if the fraction is > 0), chosen by ``seed``.

    Both parts keep the rows' original order; the same rows and seed give the same split.
    """
    n = len(rows)
    n_eval = round(n * eval_fraction)
    if eval_fraction > 0 and n_eval == 0 and n > 1:
        n_eval = 1
    held = set(random.Random(f"eval-split:{seed}").sample(range(n), n_eval))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
