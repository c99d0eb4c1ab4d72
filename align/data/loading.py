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
  Hub names need network access (or the ``datasets`` cache with ``HF_HUB_OFFLINE=1``); the Hub
  is asked about the id once, with a 5 s timeout, before ``load_dataset`` (:mod:`align.data.hub`),
  so a mistyped id or no network fails in seconds. Nothing is downloaded in tests.

A name that is not on disk is read as a hub id only when it could be one (:func:`looks_local`
says no): ``./x``, ``/x``, ``a/b/c`` or ``rm/typo`` beside an existing ``rm/`` folder is a
missing local path, reported at once. For a hub id the hub is asked once, with a short timeout
(:func:`align.data.hub.check_hub_dataset`): ``datasets`` retries an unreachable hub for about
25 s before its own ``ConnectionError``. With ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` set, the cache is
used and nothing is probed.

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
from typing import Any, TypeVar

from align.data.errors import DataError, OnBadRow, RowRef, check_rows_with_refs
from align.data.hub import check_hub_dataset, hub_offline, offline_hint

T = TypeVar("T")

_JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
# Splits tried, in order, for an eval set given as a dataset with several splits.
EVAL_SPLITS: tuple[str, ...] = ("validation", "test", "eval", "train")


class DataFileNotFound(DataError, FileNotFoundError):
    """A data path that does not exist (a user error: exit 2, not a traceback)."""


_FILE_SUFFIXES = (".jsonl", ".json", ".gz", ".parquet", ".arrow", ".csv")


def looks_local(source: str) -> bool:
    """A path, not a hub id: a file suffix, ``./ / ~``, more than one ``/``, or an existing first folder."""
    if source.lower().endswith(_FILE_SUFFIXES) or source.startswith((".", "/", "~")) or source.count("/") > 1:
        return True
    return "/" in source and Path(source.split("/")[0]).is_dir()


def _nearest_folder(path: Path) -> Path:
    return next((p for p in path.parents if p.is_dir()), Path("."))


def check_source(path_or_name: str) -> None:
    """Raise :class:`DataError` now if ``path_or_name`` looks local but is not on disk (hub ids: :mod:`align.data.hub`)."""
    path = Path(path_or_name).expanduser()
    if path.exists():
        return
    if _suffix(path_or_name):
        raise DataFileNotFound(f"data file not found: {path_or_name} (the nearest existing folder is {_nearest_folder(path)}/); check the path")
    if looks_local(path_or_name):
        raise DataFileNotFound(
            f"{path_or_name}: no such local file or folder (the nearest existing folder is {_nearest_folder(path)}/); check the path"
        )


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
    """Rows of a JSON list or JSONL file. Lines are split on ``\\n`` only (JSON strings may hold
    U+2028), and each is decoded alone, so bytes that are not UTF-8 fail that row, by its line."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data.lstrip().startswith(b"["):
        try:
            rows = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise DataError(f"{path} is not UTF-8 text: byte {data[e.start]:#04x} at line {line}; save the file as UTF-8") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON: {e}") from None
        return list(rows), [None] * len(rows)
    rows, lines = [], []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        lines.append(lineno)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            rows.append(InvalidJson(f"not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); save the file as UTF-8"))
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            rows.append(InvalidJson(f"invalid JSON ({e.msg} at column {e.colno})"))
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
        if not local.exists():  # a Hub id: seconds, where load_dataset retries an unreachable Hub for ~30 s
            check_hub_dataset(path_or_name)
        try:
            if not isinstance(split, str):
                split = _pick_split(datasets.get_dataset_split_names(path_or_name), split, path_or_name)
            ds = datasets.load_dataset(path_or_name, split=split)
        except ConnectionError as e:
            if not hub_offline():
                raise
            raise DataError(f"{offline_hint(path_or_name)} ({e})") from None
    return ds.to_list()


def _read(path_or_name: str, split: str | Sequence[str]) -> tuple[list[Any], list[int | None] | None]:
    """Raw rows (``InvalidJson`` for unparseable lines) and, for JSONL, each row's line number."""
    suffix = _suffix(path_or_name)
    path = Path(path_or_name)
    check_source(path_or_name)
    if path.is_file() and not suffix:
        raise DataError(f"{path_or_name}: unsupported file type; use .jsonl, .json, .parquet, .arrow or .csv, or a dataset folder")
    if suffix in _JSON_SUFFIXES:
        try:
            rows, lines = _read_json_file(path)
        except OSError as e:
            raise DataError(f"{path_or_name}: cannot read the data file: {e.strerror or e}") from None
        return rows, lines if any(x is not None for x in lines) else None
    try:
        return _read_with_datasets(path_or_name, split), None
    except (DataError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - datasets/huggingface_hub raise many kinds for a bad hub id or file
        where = "reading it" if path.exists() else "it is not a local file or folder, and loading it as a hub dataset"
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise DataError(f"{path_or_name}: {where} failed: {type(e).__name__}: {first}") from e


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

    Unparseable JSON lines and lines that are not UTF-8 count as bad rows too: an error names
    their line, skip mode skips them.
    """
    rows, _, skipped = load_checked_rows_with_refs(path_or_name, check, split=split, on_bad_row=on_bad_row)
    return rows, skipped


def load_checked_rows_with_refs(
    path_or_name: str,
    check: Callable[[Any], None],
    *,
    split: str | Sequence[str] = "train",
    on_bad_row: OnBadRow = "error",
) -> tuple[list[dict[str, Any]], list[RowRef], int]:
    """:func:`load_checked_rows`, plus where each kept row is in the file (for later errors)."""
    rows, lines = _read(path_or_name, split)

    def check_one(row: Any) -> None:
        if isinstance(row, InvalidJson):
            raise DataError(row.reason)
        check(row)

    return check_rows_with_refs(rows, check_one, source=path_or_name, on_bad_row=on_bad_row, lines=lines)


def train_eval_split(rows: Sequence[T], eval_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Hold out ``round(len(rows) * eval_fraction)`` rows (at least one if the fraction is > 0), chosen by ``seed``.

    Both parts keep the rows' original order; the same rows and seed give the same split.
    """
    n = len(rows)
    n_eval = round(n * eval_fraction)
    if eval_fraction > 0 and n_eval == 0 and n > 1:
        n_eval = 1
    held = set(random.Random(f"eval-split:{seed}").sample(range(n), n_eval))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
