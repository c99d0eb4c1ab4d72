"""The tiny world's math tasks: arithmetic and one-step linear equations with worked traces.

Sized for the tiny policy (a ~0.5M-parameter model whose tokenizer splits digits one per
token): prompts stay under 25 tokens; traces run from a few tokens (level 1) to about 50
(level 4), so they span the budget ladder 16/32/64. Traces work column by column from
the ones digit, the way the model has to produce digits, e.g. ``47+38: 7+8=15, 4+3+1=8. 85``.

Difficulty levels:

1. one-digit ``a+b``, ``a-b`` (a >= b) and ``a*b``;
2. two-digit ``a+b`` and ``a-b`` (a >= b), and two-digit times one-digit ``a*b``;
3. ``ax+b=c`` with a whole-number solution;
4. two steps, ``a+b+c`` or ``a+b-c`` with two-digit terms and ``a+b < 100`` (each step worked by columns).

A task's level is its grade (``meta["grade"]``, envs/grades.py).

Wrong solutions (for preference pairs) make the mistakes people and small models make: a
dropped carry or borrow, one column off by one, subtracting instead of dividing. The trace is
consistent with the wrong answer, so the only tell is the arithmetic itself.
"""

from __future__ import annotations

import random
from typing import Any

Meta = dict[str, Any]


LEVELS = (1, 2, 3, 4)


def make_problem(level: int, rng: random.Random) -> Meta:
    meta = _problem(level, rng)
    meta["grade"] = level
    return meta


def _problem(level: int, rng: random.Random) -> Meta:
    if level == 1:
        op = rng.choice("+-*")
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        if op == "-" and a < b:
            a, b = b, a
        return {"level": 1, "op": op, "a": a, "b": b}
    if level == 2:
        op = rng.choice("+-*")
        if op == "*":
            return {"level": 2, "op": op, "a": rng.randint(10, 99), "b": rng.randint(2, 9)}
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if op == "-" and a < b:
            a, b = b, a
        return {"level": 2, "op": op, "a": a, "b": b}
    if level == 3:
        a, x, b = rng.randint(2, 9), rng.randint(1, 12), rng.randint(1, 20)
        return {"level": 3, "op": "linear", "a": a, "b": b, "c": a * x + b}
    if level == 4:
        # a+b stays two-digit, so the trace (both steps by columns) stays under about 50 tokens.
        a, op2 = rng.randint(10, 89), rng.choice("+-")
        b = rng.randint(10, 99 - a)
        c = rng.randint(10, min(99, a + b)) if op2 == "-" else rng.randint(10, 99)
        return {"level": 4, "op": "two_step", "a": a, "b": b, "op2": op2, "c": c}
    raise ValueError(f"math difficulty levels are {LEVELS}, got {level}")


def prompt_text(meta: Meta) -> str:
    if meta["op"] == "linear":
        return f"Solve {meta['a']}x+{meta['b']}={meta['c']} for x."
    if meta["op"] == "two_step":
        return f"What is {meta['a']}+{meta['b']}{meta['op2']}{meta['c']}?"
    return f"What is {meta['a']}{meta['op']}{meta['b']}?"


def solve(meta: Meta) -> int:
    a, b, op = meta["a"], meta["b"], meta["op"]
    if op == "linear":
        return (meta["c"] - b) // a
    if op == "two_step":
        return solve(_second(meta))
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def _digits(n: int) -> list[int]:
    return [int(d) for d in reversed(str(n))]


def _slipped(value: int, col: int, slip: tuple[int, int] | None, high: int | None = None) -> int:
    if slip is None or slip[0] != col:
        return value
    moved = value + slip[1]
    return moved if 0 <= moved and (high is None or moved <= high) else value - slip[1]


def _columns(meta: Meta, slip: tuple[int, int] | None, drop_carry: bool) -> tuple[list[str], int]:
    """Column-by-column steps and the result they spell, with an optional injected mistake.

    ``slip=(column, delta)`` makes that column's written result off by ``delta``;
    ``drop_carry`` forgets every carry (for ``-``: subtracts the smaller digit from the larger).
    """
    a, b, op = meta["a"], meta["b"], meta["op"]
    steps: list[str] = []
    if op == "*":
        xs, carry, out = _digits(a), 0, ""
        for i, x in enumerate(xs):
            c = 0 if drop_carry else carry
            p = _slipped(x * b + c, i, slip)
            steps.append(f"{x}*{b}" + (f"+{c}" if c else "") + f"={p}")
            if i == len(xs) - 1:
                out = str(p) + out
            else:
                out, carry = str(p % 10) + out, p // 10
        return steps, int(out)
    xs, ys = _digits(a), _digits(b)
    n = max(len(xs), len(ys))
    xs, ys = xs + [0] * (n - len(xs)), ys + [0] * (n - len(ys))
    carry, out = 0, ""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if op == "+":
            c = 0 if drop_carry else carry
            s = _slipped(x + y + c, i, slip)
            steps.append(f"{x}+{y}" + (f"+{c}" if c else "") + f"={s}")
            if i == n - 1:
                out = str(s) + out
            else:
                out, carry = str(s % 10) + out, s // 10
        else:
            x -= carry
            if x < y and drop_carry:
                d, carry = y - x, 0
                steps.append(f"{y}-{x}={_slipped(d, i, slip, 9)}")
            elif x < y:
                d, carry = x + 10 - y, 1
                steps.append(f"{x + 10}-{y}={_slipped(d, i, slip, 9)}")
            else:
                d, carry = x - y, 0
                steps.append(f"{x}-{y}={_slipped(d, i, slip, 9)}")
            out = str(_slipped(d, i, slip, 9) % 10) + out
    return steps, int(out)


def _first(meta: Meta) -> Meta:
    return {"op": "+", "a": meta["a"], "b": meta["b"]}


def _second(meta: Meta, first: int | None = None) -> Meta:
    total = meta["a"] + meta["b"] if first is None else first
    return {"op": meta["op2"], "a": total, "b": meta["c"]}


def worked_trace(meta: Meta, rng: random.Random | None = None) -> tuple[str, int]:
    """(trace, answer); with ``rng``, a plausible mistake is made and the answer is wrong."""
    if meta["op"] == "two_step":
        # The mistake (if any) goes into one of the two steps; the other is worked correctly.
        wrong_first = rng is not None and rng.random() < 0.5
        t1, s1 = worked_trace(_first(meta), rng if wrong_first else None)
        second = _second(meta, s1)
        if second["op"] == "-" and second["a"] < second["b"]:
            second = _second(meta)
        t2, s2 = worked_trace(second, None if wrong_first else rng)
        return f"{t1}; {t2}", s2
    if meta["op"] == "linear":
        a, b, c = meta["a"], meta["b"], meta["c"]
        x = (c - b) // a
        if rng is None:
            return f"{a}x={c}-{b}={c - b}, x={c - b}/{a}={x}", x
        if rng.random() < 0.5 and c - b - a != x:
            return f"{a}x={c}-{b}={c - b}, x={c - b}-{a}={c - b - a}", c - b - a
        wrong = x + rng.choice([-1, 1]) if x > 0 else x + 1
        return f"{a}x={c}-{b}={c - b}, x={c - b}/{a}={wrong}", wrong
    slip, drop = None, False
    if rng is not None:
        has_carry = _columns(meta, None, True)[1] != solve(meta)
        if has_carry and rng.random() < 0.6:
            drop = True
        else:
            ncols = len(_columns(meta, None, False)[0])
            slip = (rng.randrange(ncols), rng.choice([-1, 1]))
    steps, result = _columns(meta, slip, drop)
    if len(steps) == 1:
        return steps[0], result
    return f"{meta['a']}{meta['op']}{meta['b']}: {', '.join(steps)}. {result}", result
