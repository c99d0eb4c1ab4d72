"""Tiny-world tool-use tasks: one call, one result, one boxed answer.

- calculator: "Use the calculator: 37*41" (gold: the product).
- lookup: "Look up the capital of Zorbia." with a 3-row table of invented places in the task
  (the answer is only reachable through the tool, never in the prompt).
- python: "Use python to sum 1..12." (gold: 78), run in the code sandbox.

``task.meta["call"]`` is the reference call, so demonstrations and wrong variants can be built
from a task read back from JSONL.

    python -m envs.tool_use -n 24 --seed 0 > envs/tool_use/data/examples.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

from envs.base import Task

KINDS = ("calculator", "lookup", "python")

_OPS = {"+": "add", "-": "subtract", "*": "multiply"}
_SYLLABLES = ("zor", "bi", "quel", "tan", "mo", "ra", "vek", "lu", "dar", "ix", "pel", "on")


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def _calculator(rng: random.Random, task_id: str) -> Task:
    op = rng.choice(list(_OPS))
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    expression = f"{a}{op}{b}"
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return Task(
        id=task_id,
        env="tool_use",
        prompt=[{"role": "user", "content": f"Use the calculator: {expression}"}],
        answer=str(value),
        meta={"kind": "calculator", "tools": ["calculator"], "think": _OPS[op], "call": {"name": "calculator", "arguments": {"expression": expression}}},
    )


def _lookup(rng: random.Random, task_id: str) -> Task:
    table: dict[str, str] = {}
    while len(table) < 3:
        country, capital = _name(rng, 2), _name(rng, 2)
        if country not in table and capital not in table.values():
            table[country] = capital
    country = rng.choice(list(table))
    return Task(
        id=task_id,
        env="tool_use",
        prompt=[{"role": "user", "content": f"Look up the capital of {country}."}],
        answer=table[country],
        meta={"kind": "lookup", "tools": ["lookup"], "think": "look up", "table": table, "call": {"name": "lookup", "arguments": {"key": country}}},
    )


def _python(rng: random.Random, task_id: str) -> Task:
    n = rng.randint(3, 30)
    return Task(
        id=task_id,
        env="tool_use",
        prompt=[{"role": "user", "content": f"Use python to sum 1..{n}."}],
        answer=str(n * (n + 1) // 2),
        meta={
            "kind": "python",
            "tools": ["python"],
            "think": "sum with python",
            "call": {"name": "python", "arguments": {"code": f"print(sum(range({n + 1})))"}},
        },
    )


_MAKERS = {"calculator": _calculator, "lookup": _lookup, "python": _python}


def tiny_tasks(n: int, seed: int, kinds: tuple[str, ...] = ("calculator", "lookup")) -> list[Task]:
    """``n`` tasks cycling through ``kinds``; deterministic in ``seed``."""
    rng = random.Random(seed)
    return [_MAKERS[kinds[i % len(kinds)]](rng, f"tool_use-{seed}-{i}") for i in range(n)]


def wrong_answer(task: Task, rng: random.Random) -> str:
    """A plausible wrong final answer: a near-miss number, or another capital from the table."""
    if task.meta.get("kind") == "lookup":
        others = [v for v in task.meta["table"].values() if v != task.answer]
        return rng.choice(others)
    return str(int(task.answer) + rng.choice([-10, -1, 1, 2, 10]))


def wrong_arguments(task: Task, rng: random.Random) -> dict[str, Any]:
    """The reference call with a wrong argument: another table key, or an operand off by one."""
    args = dict(task.meta["call"]["arguments"])
    if task.meta.get("kind") == "lookup":
        args["key"] = rng.choice([k for k in task.meta["table"] if k != args["key"]])
    else:
        expression = args["expression"]
        digits = [i for i, ch in enumerate(expression) if ch.isdigit()]
        i = digits[-1]
        args["expression"] = expression[:i] + str((int(expression[i]) + 1) % 10) + expression[i + 1 :]
    return args


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="print tiny-world tool-use tasks as JSON lines")
    p.add_argument("-n", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", default="calculator,lookup,python")
    args = p.parse_args(argv)
    for task in tiny_tasks(args.n, args.seed, tuple(args.kinds.split(","))):
        sys.stdout.write(json.dumps(task.to_dict()) + "\n")
    return 0
