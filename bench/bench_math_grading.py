"""How often the math environment's verdict agrees with math-verify's and with the expected one.

Usage: ``.venv/bin/python bench/bench_math_grading.py [CASES.jsonl ...]`` (default: the held-out
sets ``bench/data/math_grading_heldout*.jsonl``, which no test reads; the tests' set is
``tests/envs/data/math_grading_cases.jsonl``). ``heldout2`` was written after the last change
to the extraction and never used to tune it.

Each row of a case file: ``gold``, ``completion`` (free text, thinking included), ``expected``
(bool) and ``kind``. ``heldout3`` was written before the changes of issue 22's second pass
(one of its cases, a check after "The answer is 15.", led to a fix); ``heldout4`` after them, and
committed before anything ran on it. Any other file of such rows can be given, e.g. cases
converted from math-verify's own test suite. The environment's verdict is ``MathEnv.step``'s; math-verify's is its
default ``verify(parse(gold), parse(completion))`` with the gold boxed first (math-verify
reads a bare ``(0,9)`` as no answer). "env = math-verify where math-verify is right" counts,
among the cases where math-verify's verdict is the expected one, those where the environment
agrees: the disagreements left out are math-verify's own mistakes (an answer only inside the
thinking, a multiple-choice letter without a box). Prints a summary table and every disagreement, and
writes ``bench/results/math_grading.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.base import Task  # noqa: E402
from envs.math import MathEnv  # noqa: E402
from envs.math.extract import as_latex  # noqa: E402

HELD_OUT = sorted((Path(__file__).resolve().parent / "data").glob("math_grading_heldout*.jsonl"))
RESULTS = Path(__file__).resolve().parent / "results" / "math_grading.json"


def evaluate(path: Path) -> dict:
    from math_verify import parse, verify

    cases = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    env = MathEnv()

    async def run() -> list:
        tasks = [Task(id=f"case-{i}", env="math", prompt=[], answer=c["gold"]) for i, c in enumerate(cases)]
        return await asyncio.gather(*(env.step(t, [], c["completion"]) for t, c in zip(tasks, cases)))

    start = time.perf_counter()
    results = asyncio.run(run())
    env_s = time.perf_counter() - start
    rows = []
    for case, result in zip(cases, results):
        reference = bool(verify(parse(as_latex(case["gold"])), parse(case["completion"])))
        rows.append({**case, "env": bool(result.correct), "math_verify": reference, "extracted": result.info["extracted"], "reason": result.info["reason"]})
    n = len(rows)
    return {
        "file": str(path),
        "n": n,
        "env_agrees_with_math_verify": sum(r["env"] == r["math_verify"] for r in rows),
        "env_matches_expected": sum(r["env"] == r["expected"] for r in rows),
        "math_verify_matches_expected": sum(r["math_verify"] == r["expected"] for r in rows),
        # Agreement where the reference is right: the disagreements that are the environment's errors.
        "env_agrees_where_math_verify_right": sum(r["env"] == r["math_verify"] for r in rows if r["math_verify"] == r["expected"]),
        "env_false_positives": sum(r["env"] and not r["expected"] for r in rows),
        "math_verify_false_positives": sum(r["math_verify"] and not r["expected"] for r in rows),
        "env_seconds": env_s,
        "disagreements": [r for r in rows if r["env"] != r["math_verify"] or r["env"] != r["expected"]],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, default=HELD_OUT)
    args = ap.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    reports = [evaluate(f) for f in args.files]
    table = Table(title="math grading: environment vs math-verify vs expected")
    for col in ("cases", "n", "env = math-verify", "env = math-verify where math-verify is right", "env = expected", "math-verify = expected", "false positives env / mv"):
        table.add_column(col, justify="left" if col == "cases" else "right")
    for r in reports:
        n = r["n"]
        table.add_row(
            Path(r["file"]).name,
            str(n),
            f"{r['env_agrees_with_math_verify']} ({r['env_agrees_with_math_verify'] / n:.1%})",
            f"{r['env_agrees_where_math_verify_right']} / {r['math_verify_matches_expected']}",
            f"{r['env_matches_expected']} ({r['env_matches_expected'] / n:.1%})",
            f"{r['math_verify_matches_expected']} ({r['math_verify_matches_expected'] / n:.1%})",
            f"{r['env_false_positives']} / {r['math_verify_false_positives']}",
        )
    console = Console(width=150)
    console.print(table)
    for r in reports:
        for d in r["disagreements"]:
            console.print(
                f"[bold]{d['kind']}[/] gold={d['gold']!r} expected={d['expected']} env={d['env']} math-verify={d['math_verify']}"
                f" extracted={d['extracted']!r}: {d['completion'][-90:]!r}",
                markup=True,
                highlight=False,
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_avg_1m": os.getloadavg()[0]}
    RESULTS.write_text(json.dumps({**meta, "reports": reports}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
