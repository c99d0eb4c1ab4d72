"""``DataError``: a bad row, named by its index, its source and what is wrong with it.

Every check in :mod:`align.data` raises this one exception with a plain ``reason``; the
loops that run checks over many rows (:func:`check_rows`) add where the row came from and
either stop (``on_bad_row="error"``) or skip and count it (``on_bad_row="skip"``), so a
driver can log "skipped 3 of 2000 rows" instead of dying on row 1,731 of a long job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from align.errors import AlignError

OnBadRow = Literal["error", "skip"]


class DataError(AlignError, ValueError):
    """A row that cannot be used: ``reason`` says why, ``index``/``source``/``line`` say where.

    >>> str(DataError("no assistant turn", index=3, source="train.jsonl", line=5))
    'row 3 of train.jsonl (line 5): no assistant turn. Fix the row, or set data.on_bad_row=skip to skip bad rows.'
    """

    def __init__(self, reason: str, *, index: int | None = None, source: str | None = None, line: int | None = None):
        self.reason = reason
        self.index = index
        self.source = source
        self.line = line
        super().__init__(self._message())

    def _message(self) -> str:
        if self.index is None:
            return self.reason
        where = f"row {self.index}" + (f" of {self.source}" if self.source else "")
        if self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.reason}. Fix the row, or set data.on_bad_row=skip to skip bad rows."

    def at(self, index: int, source: str | None, line: int | None = None) -> "DataError":
        """The same reason, placed at a row (checks raise without knowing where the row is)."""
        return DataError(self.reason, index=index, source=source, line=line)


@dataclass(frozen=True)
class RowRef:
    """Where a row sits in its file: its index among the file's rows and, for JSONL, its line.

    Rows keep their ref through skipping, the eval holdout and the reasoning mix, so an error
    found at tokenization names the row as the file numbers it.
    """

    index: int
    line: int | None = None


def check_rows(
    rows: Sequence[Any],
    check: Callable[[Any], None],
    *,
    source: str,
    on_bad_row: OnBadRow = "error",
    lines: Sequence[int | None] | None = None,
) -> tuple[list[Any], int]:
    """Run ``check`` on every row: the good rows in order, and how many were skipped.

    ``lines`` (one per row) adds file line numbers to the message for JSONL sources.
    """
    good, _, skipped = check_rows_with_refs(rows, check, source=source, on_bad_row=on_bad_row, lines=lines)
    return good, skipped


def check_rows_with_refs(
    rows: Sequence[Any],
    check: Callable[[Any], None],
    *,
    source: str,
    on_bad_row: OnBadRow = "error",
    lines: Sequence[int | None] | None = None,
) -> tuple[list[Any], list[RowRef], int]:
    """:func:`check_rows`, plus the :class:`RowRef` of every good row."""
    good: list[Any] = []
    refs: list[RowRef] = []
    skipped = 0
    for i, row in enumerate(rows):
        try:
            check(row)
        except DataError as e:
            if on_bad_row == "error":
                raise e.at(i, source, lines[i] if lines is not None else None) from None
            skipped += 1
            continue
        good.append(row)
        refs.append(RowRef(i, lines[i] if lines is not None else None))
    return good, refs, skipped
