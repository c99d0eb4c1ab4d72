"""Public datasets as environment tasks: read a source, map its columns, convert each row.

A source is a JSONL/JSON/parquet/arrow/csv file, a folder written by ``Dataset.save_to_disk``,
or a Hub dataset id (read by :mod:`align.data.loading`). ``columns`` maps an environment's field
to the dataset's column (``{"prompt": "question"}``); a dotted column reaches into a nested
value (``{"answer": "reward_model.ground_truth"}``, DAPO-17K's shape). Columns not mapped keep
their names, so a file already in the environment's vocabulary needs no mapping.

Each built-in environment's format lives in its folder (``envs/<env>/dataset.py``): the fields
it reads (``FIELDS``) and ``to_task(row, index)``, which raises :class:`DataError` naming the
field that is wrong. A row in align's own task shape (``env`` and a message-list ``prompt``, as
``envs/*/data/examples.jsonl``) is read as a task as is. Bad rows follow ``on_bad_row``: the
first one stops the load with its file, row, line and field, or every bad row is skipped and
counted.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from align.data.errors import DataError, OnBadRow, check_rows
from align.data.loading import InvalidJson
from envs.base import Task
from envs.code import dataset as code_dataset
from envs.instruction_following import dataset as if_dataset
from envs.math import dataset as math_dataset
from envs.rows import map_columns, read_source
from envs.tool_use import dataset as tool_dataset


class RowFormat(Protocol):
    """What an environment's ``dataset`` module provides (``check_all`` is optional)."""

    FIELDS: tuple[str, ...]

    def to_task(self, row: dict[str, Any], index: int) -> Task: ...


FORMATS: dict[str, RowFormat] = {
    "math": math_dataset,
    "code": code_dataset,
    "instruction_following": if_dataset,
    "tool_use": tool_dataset,
}


def is_task_row(row: dict[str, Any]) -> bool:
    """A row already in align's own task shape (as ``envs/*/data/examples.jsonl``)."""
    return "env" in row and isinstance(row.get("prompt"), list)


def _native_task(row: dict[str, Any], env_name: str) -> Task:
    try:
        return Task.from_dict({**row, "env": env_name})
    except (KeyError, TypeError) as e:
        raise DataError(f"not a task ({e}); align task rows need id, prompt and answer") from None


def load_env_tasks(
    env_name: str,
    source: str,
    columns: dict[str, str] | None = None,
    on_bad_row: OnBadRow = "error",
) -> tuple[list[Task], int]:
    """Every usable row of ``source`` as a task for ``env_name``, and the number of bad rows skipped."""
    columns = dict(columns or {})
    fmt = FORMATS.get(env_name)
    if fmt is None and columns:
        raise DataError(f"columns: environment {env_name!r} has no public dataset format; it reads align task rows only")
    if fmt is not None:
        unknown = sorted(set(columns) - set(fmt.FIELDS))
        if unknown:
            raise DataError(f"columns: {env_name} has no field {', '.join(map(repr, unknown))}; its fields are {', '.join(fmt.FIELDS)}")
    rows, lines = read_source(source)
    tasks: dict[int, Task] = {}

    def convert(item: tuple[int, Any]) -> None:
        index, row = item
        if isinstance(row, InvalidJson):
            raise DataError(row.reason)
        if not isinstance(row, dict):
            raise DataError(f"the row is a {type(row).__name__}, expected an object")
        if is_task_row(row) and not columns:
            tasks[index] = _native_task(row, env_name)
        elif fmt is None:
            raise DataError(f"environment {env_name!r} reads align task rows only (env, id, prompt as messages, answer)")
        else:
            tasks[index] = fmt.to_task(map_columns(row, columns), index)

    check_all: Callable[[Sequence[dict[str, Any] | None], Sequence[int | None] | None, str], None] | None = getattr(fmt, "check_all", None)
    if check_all is not None and on_bad_row == "error":
        check_all([_mapped_or_none(r, columns) for r in rows], lines, source)
    try:
        good, skipped = check_rows(list(enumerate(rows)), convert, source=source, on_bad_row=on_bad_row, lines=lines)
    except DataError as e:
        raise EnvDataError(e.reason, index=e.index, source=e.source, line=e.line) from None
    return [tasks[i] for i, _ in good], skipped


class EnvDataError(DataError):
    """A bad row of an environment's data; the hint names the environment's ``on_bad_row`` knobs."""

    def _message(self) -> str:
        return super()._message().replace("set data.on_bad_row=skip", "set envs[].on_bad_row=skip (--skip-bad-rows on the command line)")


def _mapped_or_none(row: Any, columns: dict[str, str]) -> dict[str, Any] | None:
    """A public-format row with its columns mapped; None for anything the per-row check will name."""
    if not isinstance(row, dict) or is_task_row(row):
        return None
    try:
        return map_columns(row, columns)
    except DataError:
        return None


def split_tasks(tasks: list[Task], num_eval: int, seed: int, env_name: str) -> tuple[list[Task], list[Task]]:
    """(train, eval): a seeded shuffle, then up to ``num_eval`` (at most a fifth) held out."""
    shuffled = list(tasks)
    random.Random(f"split:{seed}:{env_name}").shuffle(shuffled)
    n_eval = min(num_eval, len(shuffled) // 5)
    return shuffled[n_eval:], shuffled[:n_eval]
