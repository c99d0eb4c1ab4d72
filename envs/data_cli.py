"""``align envs test NAME --data FILE`` and ``align envs score NAME --data FILE --completions FILE``.

``test --data`` loads a dataset through the environment's public format (:mod:`envs.public_data`)
and plays each row's own reference (a reference answer, program, response or call) through the
environment: the share that verifies says whether the data and the environment agree before a
long run. Rows without a reference are counted, not failed.

``score`` plays a file of completions against the dataset's rows and writes one JSON line per
row (``id``, ``verdict``: correct/wrong/error, ``reward``, ``reason``, ``extracted``) to
``--output`` (stdout by default), and a summary table (to stderr when the lines go to stdout).
A completion row is ``{"id": ..., "completion": "..."}`` (a list of strings for a multi-turn
episode, played turn by turn); without ids, completion row *i* goes with data row *i*.

Exit codes: 0 done (``test``: every reference verified), 1 some reference failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from align.data.errors import DataError
from align.data.loading import load_rows
from envs.base import Environment, SelfCheck, StepResult, Task
from envs.cli import EXIT_BAD_INPUT, EXIT_FAILED, _env_or_none, err, out, play
from envs.public_data import load_env_tasks


def parse_columns(pairs: list[str] | None) -> dict[str, str]:
    """``["prompt=question", ...]`` as a mapping; a pair without ``=`` is a DataError."""
    columns = {}
    for pair in pairs or []:
        field_name, eq, column = pair.partition("=")
        if not eq or not field_name or not column:
            raise DataError(f"--columns {pair!r}: expected FIELD=COLUMN, e.g. prompt=question")
        columns[field_name.strip()] = column.strip()
    return columns


def _load(args: argparse.Namespace) -> tuple[list[Task], int]:
    return load_env_tasks(args.name, args.data, parse_columns(args.columns), "skip" if args.skip_bad_rows else "error")


def reason_of(result: StepResult) -> str:
    """The environment's ``reason``, else its error, else the extracted answer it judged."""
    info = result.info
    if "error" in info:
        return f"error: {info['error']}"
    if info.get("reason"):
        return str(info["reason"])
    if "extracted" in info:
        found = "no answer extracted" if info["extracted"] is None else f"extracted {info['extracted']!r}"
        return found + (f", gold {info['gold']!r}" if "gold" in info else "")
    return "correct" if result.correct else "wrong"


def verdict_of(result: StepResult) -> str:
    return "error" if "error" in result.info else ("correct" if result.correct else "wrong")


def _reference(env: Environment, task: Task) -> list[str] | None:
    demonstrate = getattr(env, "demonstrate", None)  # a plugin may score without making demonstrations
    if demonstrate is None:
        return None
    try:
        turns = demonstrate(task)
    except (ValueError, KeyError):  # the row carries no reference (an IFEval row without a response)
        return None
    return [m["content"] for m in turns if m["role"] == "assistant"]


async def _play_all(env: Environment, plays: list[tuple[Task, list[str]]]) -> list[StepResult]:
    return list(await asyncio.gather(*(play(env, SelfCheck(task, turns, True)) for task, turns in plays)))


def cmd_test(args: argparse.Namespace) -> int:
    env = _env_or_none(args.name)
    if env is None:
        return EXIT_BAD_INPUT
    tasks, skipped = _load(args)
    refs = [(t, _reference(env, t)) for t in tasks]
    plays = [(t, r) for t, r in refs if r]
    results = asyncio.run(_play_all(env, plays))
    failed = [(t, res) for (t, _), res in zip(plays, results) if not res.correct]
    if failed:
        table = Table(title=f"rows whose reference does not verify: {args.data}", title_justify="left")
        table.add_column("row id")
        table.add_column("reason", overflow="fold")
        for task, res in failed:
            table.add_row(escape(task.id), escape(reason_of(res)))
        out.print(table)
    n, ok = len(plays), len(plays) - len(failed)
    share = f"{ok}/{n} rows verify against their own reference ({100 * ok / n:.1f}%)" if n else "no row has a reference to verify"
    out.print(f"[bold {'green' if not failed else 'red'}]{args.name}: {share}[/]")
    notes = [f"{len(tasks) - n} row(s) without a reference"] if len(tasks) > n else []
    notes += [f"{skipped} bad row(s) skipped"] if skipped else []
    if notes:
        out.print(", ".join(notes))
    return EXIT_FAILED if failed else 0


def _pairs(tasks: list[Task], source: str) -> list[tuple[Task, list[str]]]:
    if not Path(source).is_file():
        raise DataError(f"{source}: no such completions file")
    rows = load_rows(source)
    by_id = {t.id: t for t in tasks}
    pairs = []
    for i, row in enumerate(rows):
        completion = row.get("completion")
        turns = [completion] if isinstance(completion, str) else completion
        if not isinstance(turns, list) or not turns or not all(isinstance(c, str) for c in turns):
            raise DataError("field 'completion': expected a string or a list of strings", index=i, source=source)
        if "id" in row:
            task = by_id.get(str(row["id"]))
            if task is None:
                raise DataError(f"field 'id': no data row has id {row['id']!r}", index=i, source=source)
        elif i < len(tasks):
            task = tasks[i]
        else:
            raise DataError(f"no id, and the data has only {len(tasks)} rows to pair by position", index=i, source=source)
        pairs.append((task, turns))
    return pairs


def record(task: Task, result: StepResult) -> dict[str, Any]:
    info = result.info
    extracted = info.get("extracted", info.get("answer"))
    return {"id": task.id, "verdict": verdict_of(result), "reward": round(result.reward, 4), "reason": reason_of(result), "extracted": extracted}


def cmd_score(args: argparse.Namespace) -> int:
    env = _env_or_none(args.name)
    if env is None:
        return EXIT_BAD_INPUT
    tasks, skipped = _load(args)
    pairs = _pairs(tasks, args.completions)
    results = asyncio.run(_play_all(env, pairs))
    records = [record(task, res) for (task, _), res in zip(pairs, results)]
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if args.output in (None, "-"):
        sys.stdout.write(lines)
        sys.stdout.flush()
        summary_console = err
    else:
        with open(args.output, "w") as f:
            f.write(lines)
        summary_console = out
    counts = Counter(r["verdict"] for r in records)
    table = Table()
    for col in ("verdict", "rows", "share", "mean reward"):
        table.add_column(col)
    for verdict in ("correct", "wrong", "error"):
        rows = [r for r in records if r["verdict"] == verdict]
        share = f"{100 * len(rows) / len(records):.1f}%" if records else "-"
        mean = f"{sum(r['reward'] for r in rows) / len(rows):.3f}" if rows else "-"
        table.add_row(verdict, str(counts[verdict]), share, mean)
    summary_console.print(f"[bold]{args.name}: {len(records)} completions scored[/]")
    summary_console.print(table)
    if skipped:
        summary_console.print(f"{skipped} bad data row(s) skipped")
    if args.output not in (None, "-"):
        summary_console.print(f"wrote {len(records)} rows to {escape(args.output)}")
    return 0
