"""Tiny-world code tasks: one-line functions a sub-million-parameter model can learn to write.

Three grades (``meta["grade"]``, envs/grades.py): 1, one operation (``x+3``, ``max(a, b)``);
2, two operations or two constants (``x*3+4``, ``xs.count(5)``); 3, a filter or a clamp over
the input, with a longer plan in the think block (``sum(v for v in xs if v>4)``).

Every task is "Write f(...) returning ..." (or a two-line stdin/stdout program) with a reference
solution, a few wrong but plausible programs (for preference pairs) and 4 asserts. Prompts and
solutions stay under 40 tokens of the tiny tokenizer. Expected values are computed by running
the *reference* solution in-process: it is our own trusted code, never the policy's.

    python -m envs.code -n 24 --seed 0 > envs/code/data/examples.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from envs.base import Task
from envs.grades import draw_grade

FENCE = "```"


def render(think: str, program: str) -> str:
    """The assistant turn of a demonstration: a short think block, then one python block."""
    return f"<think>{think}</think>{FENCE}python\n{program.rstrip()}\n{FENCE}"


def _int(rng: random.Random) -> int:
    return rng.randint(-9, 20)


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdexyz") for _ in range(rng.randint(2, 5)))


def _ints(rng: random.Random) -> list[int]:
    return [rng.randint(0, 9) for _ in range(rng.randint(1, 5))]


@dataclass(frozen=True)
class Family:
    """One kind of task. ``{k}`` in the texts is a per-task constant drawn from ``k_range``;
    ``{j}`` one drawn from 1..9, ``{k1}`` is ``k+1``."""

    name: str
    prompt: str
    think: str
    args: str
    body: str
    wrong: tuple[str, ...]
    inputs: Callable[[random.Random], tuple[Any, ...]]
    k_range: tuple[int, int] = (1, 9)
    grade: int = 1


FAMILIES: tuple[Family, ...] = (
    Family("add_k", "Write f(x) returning x+{k}.", "add {k}", "x", "return x+{k}", ("return x+{k1}", "return x-{k}"), lambda r: (_int(r),), (1, 99)),
    Family("sub_k", "Write f(x) returning x-{k}.", "subtract {k}", "x", "return x-{k}", ("return x+{k}", "return {k}-x"), lambda r: (_int(r),), (1, 99)),
    Family("mul_k", "Write f(x) returning x*{k}.", "multiply by {k}", "x", "return x*{k}", ("return x+{k}", "return x*{k1}"), lambda r: (_int(r),), (2, 19)),
    Family("square", "Write f(x) returning x squared.", "x times x", "x", "return x*x", ("return x*2", "return x+x"), lambda r: (_int(r),)),
    Family("abs", "Write f(x) returning the absolute value of x.", "abs", "x", "return abs(x)", ("return x", "return -x"), lambda r: (r.randint(-9, 9),)),
    Family("even", "Write f(x) returning True if x is even.", "x mod 2", "x", "return x%2==0", ("return x%2==1", "return x>0"), lambda r: (_int(r),)),
    Family("max2", "Write f(a, b) returning the max of a and b.", "max", "a, b", "return max(a, b)", ("return min(a, b)", "return a"), lambda r: (_int(r), _int(r))),
    Family("min2", "Write f(a, b) returning the min of a and b.", "min", "a, b", "return min(a, b)", ("return max(a, b)", "return b"), lambda r: (_int(r), _int(r))),
    Family("add2", "Write f(a, b) returning a+b.", "add", "a, b", "return a+b", ("return a-b", "return a*b"), lambda r: (_int(r), _int(r))),
    Family("reverse", "Write f(s) returning s reversed.", "reverse", "s", "return s[::-1]", ("return s", "return s[1:]"), lambda r: (_word(r),)),
    Family("upper", "Write f(s) returning s in upper case.", "upper", "s", "return s.upper()", ("return s.lower()", "return s"), lambda r: (_word(r),)),
    Family("sum_list", "Write f(xs) returning the sum of xs.", "sum", "xs", "return sum(xs)", ("return max(xs)", "return len(xs)"), lambda r: (_ints(r),)),
    Family("len_list", "Write f(xs) returning the length of xs.", "length", "xs", "return len(xs)", ("return sum(xs)", "return len(xs)+1"), lambda r: (_ints(r),)),
    Family("first", "Write f(xs) returning the first item of xs.", "index 0", "xs", "return xs[0]", ("return xs[-1]", "return xs[1:]"), lambda r: (_ints(r),)),
    # grade 2: two operations
    Family("mul_add", "Write f(x) returning x*{k}+{j}.", "multiply by {k}, then add {j}", "x", "return x*{k}+{j}",
           ("return x*{k}", "return x+{k}+{j}", "return x*{k}-{j}"), lambda r: (_int(r),), (2, 9), 2),
    Family("add_mul", "Write f(x) returning (x+{j})*{k}.", "add {j}, then multiply by {k}", "x", "return (x+{j})*{k}",
           ("return x+{j}*{k}", "return x*{k}+{j}"), lambda r: (_int(r),), (2, 9), 2),
    Family("count_k", "Write f(xs) returning how many items of xs equal {k}.", "count the items equal to {k}", "xs", "return xs.count({k})",
           ("return len(xs)", "return int({k} in xs)"), lambda r: (_ints(r) + [r.randint(0, 9)] * r.randint(0, 2),), (0, 9), 2),
    Family("diff2", "Write f(a, b) returning a-b times {k}.", "subtract b from a, then multiply by {k}", "a, b", "return (a-b)*{k}",
           ("return a-b*{k}", "return (b-a)*{k}"), lambda r: (_int(r), _int(r)), (2, 19), 2),
    Family("weighted", "Write f(a, b) returning a*{k}+b*{j}.", "multiply a by {k} and b by {j}, then add", "a, b", "return a*{k}+b*{j}",
           ("return a*{k}-b*{j}", "return a+b*{j}"), lambda r: (_int(r), _int(r)), (2, 9), 2),
    # grade 3: a filter or a clamp, longer code and a longer plan
    Family("sum_gt", "Write f(xs) returning the sum of the items of xs above {k}.",
           "keep each item v of xs with v>{k}, then add the kept items up", "xs", "return sum(v for v in xs if v>{k})",
           ("return sum(xs)", "return sum(v for v in xs if v<{k})", "return sum(1 for v in xs if v>{k})"), lambda r: (_ints(r),), (1, 8), 3),
    Family("count_gt", "Write f(xs) returning how many items of xs are above {k}.",
           "go over xs, count 1 for each item v with v>{k}, then add the counts", "xs", "return sum(1 for v in xs if v>{k})",
           ("return len(xs)", "return sum(1 for v in xs if v<{k})", "return sum(v for v in xs if v>{k})"), lambda r: (_ints(r),), (1, 8), 3),
    Family("clamp", "Write f(x) returning x clamped to {j}..{k}.",
           "if x is below {j} use {j}, if x is above {k} use {k}, else keep x", "x", "return min(max(x, {j}), {k})",
           ("return max(x, {j})", "return min(x, {k})"), lambda r: (r.randint(-9, 50),), (10, 40), 3),
    Family("max_minus_min", "Write f(xs) returning the largest item of xs minus the smallest.",
           "find the largest item of xs, find the smallest, then subtract the smallest", "xs", "return max(xs)-min(xs)",
           ("return max(xs)", "return max(xs)+min(xs)"), lambda r: (_ints(r) + [r.randint(0, 9)],), (1, 9), 3),
)
GRADES: tuple[int, ...] = tuple(sorted({f.grade for f in FAMILIES}))

N_ASSERTS = 4
# One-argument families also vary the argument's name, so held-out prompts exist at all: with x
# alone and constants up to 9 the generator had 37 distinct prompts, all seen in training.
ARG_NAMES = ("x", "n", "y", "v")


def _program(args: str, body: str) -> str:
    return f"def f({args}):\n    {body}"


def _call(program: str, inputs: tuple[Any, ...]) -> Any:
    namespace: dict[str, Any] = {}
    exec(program, namespace)  # noqa: S102 - our own reference/wrong programs, never the policy's
    try:
        return namespace["f"](*inputs)
    except Exception as e:  # noqa: BLE001 - a wrong program may crash; that is a failing output
        return e


def _distinct(cases: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    seen: dict[str, tuple[Any, ...]] = {}
    for c in cases:
        seen.setdefault(repr(c), c)
    return list(seen.values())


def _rename(family: Family, name: str) -> Family:
    import dataclasses
    import re

    def sub(text: str) -> str:
        return re.sub(r"\bx\b", name, text)

    return dataclasses.replace(family, prompt=sub(family.prompt), think=sub(family.think), args=name,
                               body=sub(family.body), wrong=tuple(sub(w) for w in family.wrong))  # fmt: skip


def _task(family: Family, rng: random.Random, task_id: str) -> Task:
    if family.args == "x":
        family = _rename(family, rng.choice(ARG_NAMES))
    k = rng.randint(*family.k_range)
    fill = {"k": k, "k1": k + 1, "j": rng.randint(1, 9)}
    solution = _program(family.args, family.body.format(**fill))
    wrong_all = [_program(family.args, w.format(**fill)) for w in family.wrong]
    # Inputs that tell every wrong program apart from the reference (redraw otherwise).
    for _ in range(100):
        cases = _distinct([family.inputs(rng) for _ in range(3 * N_ASSERTS)])[:N_ASSERTS]
        if len(cases) < N_ASSERTS:
            continue
        expected = [_call(solution, c) for c in cases]
        if all(any(_call(w, c) != e for c, e in zip(cases, expected)) for w in wrong_all):
            break
    else:
        raise RuntimeError(f"could not find inputs separating {family.name} from its wrong programs")
    asserts = [f"assert f({', '.join(repr(a) for a in c)}) == {e!r}" for c, e in zip(cases, expected)]
    return Task(
        id=task_id,
        env="code",
        prompt=[{"role": "user", "content": family.prompt.format(**fill)}],
        answer=solution,
        meta={
            "family": family.name,
            "grade": family.grade,
            "think": family.think.format(**fill),
            "wrong": wrong_all,
            "tests": {"kind": "asserts", "asserts": asserts},
        },
    )


def tiny_tasks(n: int, seed: int, grade_weights: Mapping[int, float] | None = None) -> list[Task]:
    """``n`` tasks; each draws its grade (``grade_weights``, empty: uniform), then rotates through
    that grade's families in a seeded shuffle; deterministic in ``seed``."""
    rng = random.Random(seed)
    rotation: dict[int, list[Family]] = {g: [f for f in FAMILIES if f.grade == g] for g in GRADES}
    for families in rotation.values():
        rng.shuffle(families)
    used = dict.fromkeys(GRADES, 0)
    tasks = []
    for i in range(n):
        g = draw_grade(rng, GRADES, grade_weights or {})
        tasks.append(_task(rotation[g][used[g] % len(rotation[g])], rng, f"code-{seed}-{i}"))
        used[g] += 1
    return tasks


def io_example() -> Task:
    """A stdin/stdout task (the competitive-programming shape), for self-checks and examples."""
    cases = [{"stdin": f"{x}\n", "stdout": f"{2 * x}\n"} for x in (3, 7, -4)]
    return Task(
        id="code-io-double",
        env="code",
        prompt=[{"role": "user", "content": "Read x from stdin and print 2*x."}],
        answer="print(int(input())*2)",
        meta={"family": "io_double", "think": "read, double", "wrong": ["print(int(input())+2)"], "tests": {"kind": "io", "cases": cases}},
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for task in [*tiny_tasks(args.n, args.seed), io_example()]:
        sys.stdout.write(json.dumps(task.to_dict()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
