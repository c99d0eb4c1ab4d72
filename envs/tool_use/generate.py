"""Tiny-world tool-use tasks: chains of 1 to 3 calls, then one boxed answer.

Grade 1, one call (``meta["grade"]``, envs/grades.py):

- calculator: "Use the calculator: 37*41" (gold: the product).
- lookup: "Look up the capital of place 47." with a 3-row table of numbered places and invented
  capitals in the task (the answer is only reachable through the tool, never in the prompt).
- python: "Use python to sum 1..12." (gold: 78), run in the code sandbox.

Grade 2, ``lookup_calc``: "Look up the code of item 47, then multiply it by 7." (a lookup, then a
calculator call on its result). Grade 3, ``lookup2_calc``: "Add the codes of items 47 and 12."
(two lookups in one turn, then a calculator call on both results).

Lookup keys are two-digit numbers, so every argument of a chain is digits copied from the prompt
or from a tool result, which the tiny policy does (grade-1 calculator calls: 0.85 right after
SFT). Keys were invented names (Zorbitan: 4 tokens, written with a leading space in the prompt
and none in the call); after SFT the policy looked up the same few names whatever the prompt
said, 0 of 65 held-out grade-2/3 chains right (issue 20).

``task.meta["turns"]`` is the reference chain (a list of turns, each a list of calls) and
``meta["call"]`` its first call, so demonstrations and wrong variants can be built from a task
read back from JSONL.

    python -m envs.tool_use -n 24 --seed 0 > envs/tool_use/data/examples.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Mapping
from typing import Any

from envs.base import Task
from envs.grades import draw_grade

KINDS = ("calculator", "lookup", "python", "lookup_calc", "lookup2_calc")
GRADE_OF_KIND = {"calculator": 1, "lookup": 1, "python": 1, "lookup_calc": 2, "lookup2_calc": 3}

_OPS = {"+": "add", "-": "subtract", "*": "multiply"}
_SYLLABLES = ("zor", "bi", "quel", "tan", "mo", "ra", "vek", "lu", "dar", "ix", "pel", "on")


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def _keys(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct two-digit lookup keys."""
    return [str(k) for k in rng.sample(range(10, 100), n)]


def _call(name: str, **arguments: str) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def _single(task_id: str, content: str, answer: str, kind: str, think: str, call: dict[str, Any], **meta: Any) -> Task:
    meta = {"kind": kind, "grade": GRADE_OF_KIND[kind], "tools": [call["name"]], "think": think, "call": call, "turns": [[call]], **meta}
    return Task(id=task_id, env="tool_use", prompt=[{"role": "user", "content": content}], answer=answer, meta=meta)


def _calculator(rng: random.Random, task_id: str) -> Task:
    op = rng.choice(list(_OPS))
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    expression = f"{a}{op}{b}"
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return _single(task_id, f"Use the calculator: {expression}", str(value), "calculator", _OPS[op], _call("calculator", expression=expression))


def _lookup(rng: random.Random, task_id: str) -> Task:
    capitals: list[str] = []
    while len(capitals) < 3:
        capital = _name(rng, 2)
        capitals += [capital] if capital not in capitals else []
    table = dict(zip(_keys(rng, 3), capitals))
    place = rng.choice(list(table))
    return _single(task_id, f"Look up the capital of place {place}.", table[place], "lookup", "look up", _call("lookup", key=place), table=table)


def _python(rng: random.Random, task_id: str) -> Task:
    n = rng.randint(3, 30)
    call = _call("python", code=f"print(sum(range({n + 1})))")
    return _single(task_id, f"Use python to sum 1..{n}.", str(n * (n + 1) // 2), "python", "sum with python", call)


def _codes(rng: random.Random) -> dict[str, str]:
    return {key: str(v) for key, v in zip(_keys(rng, 3), rng.sample(range(2, 41), 3))}


def chain_turns(meta: dict[str, Any], keys: list[str]) -> tuple[list[list[dict[str, Any]]], str]:
    """The calls of a lookup chain for ``keys`` (the right ones, or wrong ones for a corruption),
    and the answer they lead to: one turn of lookups, one calculator call on their results."""
    from envs.tool_use.tools import run_calculator, run_lookup

    values = [run_lookup(meta["table"], k) for k in keys]
    expression = f"{values[0]}*{meta['factor']}" if meta["kind"] == "lookup_calc" else meta["op"].join(values)
    return [[_call("lookup", key=k) for k in keys], [_call("calculator", expression=expression)]], run_calculator(expression)


def _chain(kind: str, rng: random.Random, task_id: str) -> Task:
    table = _codes(rng)
    if kind == "lookup_calc":
        keys, factor = [rng.choice(list(table))], rng.randint(2, 9)
        meta: dict[str, Any] = {"kind": kind, "table": table, "factor": factor, "think": f"look up the code, then multiply it by {factor}"}
        content = f"Look up the code of item {keys[0]}, then multiply it by {factor}."
    else:
        keys, op = rng.sample(list(table), 2), rng.choice("+*")
        word = {"+": "Add", "*": "Multiply"}[op]
        meta = {"kind": kind, "table": table, "op": op, "think": f"look up both codes, then {word.lower()} them"}
        content = f"{word} the codes of items {keys[0]} and {keys[1]}."
    turns, answer = chain_turns(meta, keys)
    meta.update(grade=GRADE_OF_KIND[kind], tools=["lookup", "calculator"], keys=keys, call=turns[0][0], turns=turns)
    return Task(id=task_id, env="tool_use", prompt=[{"role": "user", "content": content}], answer=answer, meta=meta)


_MAKERS = {"calculator": _calculator, "lookup": _lookup, "python": _python}


def tiny_tasks(
    n: int, seed: int, kinds: tuple[str, ...] = ("calculator", "lookup"), grade_weights: Mapping[int, float] | None = None
) -> list[Task]:
    """``n`` tasks of ``kinds``; deterministic in ``seed``. Each task draws its grade
    (``grade_weights``, empty: uniform over the grades of ``kinds``), then takes the next kind of
    that grade in rotation."""
    rng = random.Random(seed)
    by_grade: dict[int, list[str]] = {}
    for kind in kinds:
        by_grade.setdefault(GRADE_OF_KIND[kind], []).append(kind)
    used = dict.fromkeys(by_grade, 0)
    tasks = []
    for i in range(n):
        g = draw_grade(rng, list(by_grade), grade_weights or {}) if len(by_grade) > 1 else next(iter(by_grade))
        kind = by_grade[g][used[g] % len(by_grade[g])]
        used[g] += 1
        make = _MAKERS.get(kind)
        tasks.append(make(rng, f"tool_use-{seed}-{i}") if make else _chain(kind, rng, f"tool_use-{seed}-{i}"))
    return tasks


def wrong_keys(task: Task, rng: random.Random) -> list[str]:
    """A chain's lookup keys with the first one swapped for another key of the table."""
    keys = list(task.meta["keys"])
    keys[0] = rng.choice([k for k in task.meta["table"] if k not in keys])
    return keys


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
    p.add_argument("--kinds", default=",".join(KINDS))
    args = p.parse_args(argv)
    for task in tiny_tasks(args.n, args.seed, tuple(args.kinds.split(","))):
        sys.stdout.write(json.dumps(task.to_dict()) + "\n")
    return 0
