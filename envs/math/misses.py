"""Where the policy's math answers go wrong: false arithmetic steps, or something else.

``python -m envs.math.misses runs/tiny/eval_sft.jsonl runs/tiny/eval_rl.jsonl`` reads evaluation
samples (the pipeline report writes ``eval_<stage>.jsonl``, ``align eval`` ``eval_samples.jsonl``)
and prints, per file, how many math answers are wrong, how many of those state a false step in
their think block (:func:`envs.math.steps.first_false_step`), and the share of true steps. A miss
with a false step is a wrong arithmetic fact, which a reward for the whole answer rarely fixes
(docs/tiny-grpo-trials.md); a miss without one is a wrong procedure or a misread prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from envs.math.steps import STEP, first_false_step

FIELDS = ("answers", "wrong", "wrong_false_step", "right_false_step", "steps", "true_steps")


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Counts over sample rows (``completion``, ``correct``); steps are read before ``</think>``."""
    out = dict.fromkeys(FIELDS, 0)
    for row in rows:
        thought = str(row["completion"]).split("</think>")[0]
        true = [first_false_step(m.group(0)) is None for m in STEP.finditer(thought)]
        out["steps"] += len(true)
        out["true_steps"] += sum(true)
        false = not all(true)  # the thought states a false step
        out["answers"] += 1
        if row["correct"]:
            out["right_false_step"] += false
        else:
            out["wrong"] += 1
            out["wrong_false_step"] += false
    return out


def read_rows(path: Path, env: str, mode: str) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror}); pass the eval_<stage>.jsonl that align pipeline "
                         "writes next to its report, or the eval_samples.jsonl of align eval") from None  # fmt: skip
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i} is not JSON ({e.msg}); pass a file of evaluation samples") from None
        if row.get("env") == env and row.get("mode") == mode:
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m envs.math.misses", description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path, help="evaluation sample files (JSON lines)")
    ap.add_argument("--env", default="math", help="which environment's rows to read (default: math)")
    ap.add_argument("--mode", default="think", help="which evaluation mode's rows to read (default: think)")
    args = ap.parse_args(argv)
    try:
        tables = [(p, summarize(read_rows(p, args.env, args.mode))) for p in args.files]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| file | answers | wrong | wrong with a false step | right with a false step | true steps |")
    print("|---|---|---|---|---|---|")
    for path, s in tables:
        share = f"{s['true_steps'] / s['steps']:.3f}" if s["steps"] else "-"
        print(f"| {path} | {s['answers']} | {s['wrong']} | {s['wrong_false_step']} | {s['right_false_step']} | "
              f"{s['true_steps']}/{s['steps']} = {share} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
