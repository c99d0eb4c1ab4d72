"""``DataError``: a bad row, named by its index, its source and what is wrong with it.

Every check in :mod:`align.data` raises this one exception with a plain ``reason``; the
loops that run checks over many rows (:func:`check_rows`) add where the row came from and
either stop (``on_bad_row="error"``) or skip and count it (``on_bad_row="skip"``), so a
driver can log "skipped 3 of 2000 rows" instead of dying on row 1,731 of a long job. In
``error`` mode the whole source is still checked, and one error lists the first
:data:`MAX_LISTED` bad rows and the count, so a user fixes them in one pass, not one per run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from align.errors import AlignError

OnBadRow = Literal["error", "skip"]
MAX_LISTED = 10  # bad rows named in one error
FIX = "Fix the row, or set data.on_bad_row=skip to skip bad rows."


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
        return f"{where}: {self.reason}. {FIX}"

    def at(self, index: int, source: str | None, line: int | None = None) -> "DataError":
        """The same reason, placed at a row (checks raise without knowing where the row is)."""
        return DataError(self.reason, index=index, source=source, line=line)


class BadRowsError(DataError):
    """Several bad rows of one source: the first :data:`MAX_LISTED`, each with its reason, and the count.

    ``index``/``line`` are the first bad row's; ``errors`` holds every one found.
    """

    def __init__(self, errors: Sequence[DataError], source: str | None):
        self.errors = list(errors)
        first = self.errors[0]
        shown = self.errors[:MAX_LISTED]
        head = f"{len(self.errors)} bad rows in {source or 'the data'}" + (f"; the first {len(shown)}:" if len(self.errors) > len(shown) else ":")
        lines = [f"  row {e.index}" + (f" (line {e.line})" if e.line is not None else "") + f": {e.reason}" for e in shown]
        fix = "Fix the rows, or set data.on_bad_row=skip to skip bad rows (they are counted)."
        super().__init__("\n".join([head, *lines, fix]))
        self.index, self.source, self.line = first.index, source, first.line


class BadRows:
    """Collects the bad rows of one pass over a source; :meth:`raise_if_any` raises one error for all.

    One bad row raises the plain :class:`DataError` ("row 3 of f.jsonl (line 5): ..."), several a
    :class:`BadRowsError` listing the first :data:`MAX_LISTED`.
    """

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.errors: list[DataError] = []

    def add(self, error: DataError, index: int, line: int | None = None) -> None:
        self.errors.append(error.at(index, self.source, line))

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise BadRowsError(self.errors, self.source)


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
    bad = BadRows(source)
    for i, row in enumerate(rows):
        line = lines[i] if lines is not None else None
        try:
            check(row)
        except DataError as e:
            bad.add(e, i, line)
            continue
        good.append(row)
        refs.append(RowRef(i, line))
    if on_bad_row == "error":
        bad.raise_if_any()
    return good, refs, len(bad.errors)
