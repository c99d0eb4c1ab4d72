"""Throughput of the verifiers and reward functions on one core.

Usage: ``.venv/bin/python bench/bench_verifiers.py [--scale 1.0] [--no-pin] [--baseline-ref main] [--repeats 5]``

Pins itself (and so its math-verify worker) to one CPU, times each verifier on the tiny
world's data, prints a table and writes ``bench/results/verifiers.json``. The math fast path
has a floor of 1,000 plain-number checks per second; the script exits 1 if it is missed.

Before vs after: ``envs/math/verify.py`` as of ``--baseline-ref`` (read with ``git show``) is
loaded beside the working tree's, and both grade the same plain-number inputs in interleaved
repeats (the order alternates); the second table gives medians and minima per item and the
after/before ratios of both. The script exits 1 if a plain-number case's ratio of minima (the
estimate least moved by other load on a shared machine) is over 2. The old step path is ``split_thinking`` +
``extract_answer`` + ``fast_compare``, the new one ``grade``.

Limits: wall-clock timings on a shared machine; other load shows up as noise. The math-verify
row excludes the worker's start (reported on its own row) and uses expressions that the fast
path cannot decide.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import types
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.instruction_following import InstructionFollowingEnv  # noqa: E402
from envs.math import MathEnv, is_equivalent  # noqa: E402
from align.reasoning import split_thinking  # noqa: E402
from envs.math.verify import compare, grade  # noqa: E402
from rewards.testing import trajectory  # noqa: E402
from rewards.combine import combine  # noqa: E402
from rewards.registry import make_reward  # noqa: E402

FAST_PATH_FLOOR_PER_S = 1000.0
RESULTS = Path(__file__).resolve().parent / "results" / "verifiers.json"


def timed(n: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_math_fast(n: int) -> float:
    rng = random.Random(0)
    pairs = [(str(a), str(a if rng.random() < 0.5 else a + 1)) for a in (rng.randint(-9999, 9999) for _ in range(n))]
    return timed(n, lambda: [is_equivalent(p, g) for p, g in pairs])


def _steps(env, tasks, actions) -> float:
    async def run() -> None:
        for task, action in zip(tasks, actions):
            await env.step(task, [], action)

    return timed(len(tasks), lambda: asyncio.run(run()))


def bench_math_step(n: int) -> float:
    env, rng = MathEnv(), random.Random(1)
    tasks = env.generate(n, seed=1)
    actions = [(env.demonstrate(t) if i % 2 else env.corrupt(t, rng))[0]["content"] for i, t in enumerate(tasks)]
    return _steps(env, tasks, actions)


MATH_VERIFY_PAIRS = [
    ("x^2+2x+1", "(x+1)^2"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
    ("(1,2]", "(1, 2]"),
    ("\\{1,2,3\\}", "\\{3,2,1\\}"),
    ("y=2x+1", "y=1+2x"),
    ("2^{10}", "1024"),
    ("\\pi/2", "\\frac{\\pi}{2}"),
    ("x^2+1", "(x+1)^2"),
]


def bench_math_verify(n: int) -> tuple[float, float]:
    start_s = timed(1, lambda: compare("x+1", "1+x"))
    pairs = [MATH_VERIFY_PAIRS[i % len(MATH_VERIFY_PAIRS)] for i in range(n)]
    return start_s, timed(n, lambda: [compare(p, g) for p, g in pairs])


def load_baseline(ref: str) -> types.ModuleType:
    """``envs/math/verify.py`` as of git ``ref``, as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{ref}:envs/math/verify.py"], cwd=root, check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("baseline_math_verify")
    module.__file__ = f"{ref}:envs/math/verify.py"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - our own file at another commit
    return module


def before_after(n: int, repeats: int, ref: str) -> list[dict]:
    """Median seconds per item, old vs new, on the same plain-number inputs, interleaved."""
    old = load_baseline(ref)
    rng = random.Random(3)
    pairs = [(str(a), str(a if rng.random() < 0.5 else a + 1)) for a in (rng.randint(-99999, 99999) for _ in range(n))]
    env, rng = MathEnv(), random.Random(4)
    tasks = env.generate(n, seed=4)
    steps = [((env.demonstrate(t) if i % 2 else env.corrupt(t, rng))[0]["content"], str(t.answer)) for i, t in enumerate(tasks)]
    boxed = [(f"<think>so</think>The answer is \\boxed{{{p}}}.", g) for p, g in pairs]

    def old_step(batch: list[tuple[str, str]]) -> None:
        for completion, gold in batch:
            answer = split_thinking(completion)[1]
            old.fast_compare(old.extract_answer(answer) if answer else None, gold)

    def new_step(batch: list[tuple[str, str]], method: str = "fast") -> None:
        for completion, gold in batch:
            assert grade(completion, gold).method == method

    said = [(f"<think>so</think>We add them up. The answer is {p}.", g) for p, g in pairs]
    free = [(f"<think>so</think>Adding them up we get ${p}$ apples in all.", g) for p, g in pairs[: max(1, n // 10)]]

    cases = {
        "is_equivalent, plain numbers": (lambda: [old.is_equivalent(p, g) for p, g in pairs], lambda: [is_equivalent(p, g) for p, g in pairs]),
        "step, tiny-world completions": (lambda: old_step(steps), lambda: new_step(steps)),
        "step, thinking + boxed plain number": (lambda: old_step(boxed), lambda: new_step(boxed)),
        "step, free text 'The answer is N.'": (lambda: old_step(said), lambda: new_step(said)),
        # Not gated: other free text now goes to math-verify's extraction in the worker (the old
        # regex read "the last number" in-process, the source of the false positives).
        "step, free text '... we get $N$ apples' (n/10)": (lambda: old_step(free), lambda: new_step(free, "math_verify")),
    }
    rows = []
    grade("x", "1")  # start the worker outside the timings
    for name, (before, after) in cases.items():
        count = len(free) if name.endswith("(n/10)") else n
        times: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(repeats):
            order = [("before", before), ("after", after)] if r % 2 == 0 else [("after", after), ("before", before)]
            for label, fn in order:
                times[label].append(timed(count, fn) / count)
        b, a = statistics.median(times["before"]), statistics.median(times["after"])
        min_ratio = min(times["after"]) / min(times["before"])
        rows.append({"name": name, "n": count, "repeats": repeats, "gated": not name.endswith("(n/10)"), "before_us": b * 1e6, "after_us": a * 1e6, "ratio": a / b,
                     "before_min_us": min(times["before"]) * 1e6, "after_min_us": min(times["after"]) * 1e6, "min_ratio": min_ratio,
                     "per_repeat_ratio": [x / y for x, y in zip(times["after"], times["before"])]})
    return rows


def bench_if_step(n: int) -> float:
    env, rng = InstructionFollowingEnv(), random.Random(2)
    tasks = env.generate(n, seed=2)
    actions = [(env.demonstrate(t) if i % 2 else env.corrupt(t, rng))[0]["content"] for i, t in enumerate(tasks)]
    return _steps(env, tasks, actions)


def bench_rewards(n: int) -> float:
    batch = [
        trajectory("<think>2+2=4</think>4", budget=64, thinking_tokens=i % 100, completion_tokens=i % 300, max_new_tokens=256)
        for i in range(n)
    ]
    fns = [(make_reward("format"), 1.0), (make_reward("reasoning_budget"), 1.0), (make_reward("length"), 1.0)]
    return timed(n, lambda: combine(fns, batch))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every sample count")
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    ap.add_argument("--baseline-ref", default="main", help="git ref whose envs/math/verify.py is 'before'")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats of the before/after comparison")
    args = ap.parse_args()
    pinned = None
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        pinned = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {pinned})

    def n(base: int) -> int:
        return max(1, int(base * args.scale))

    rows: list[dict] = []

    def add(name: str, count: int, seconds: float, unit: str, floor: float | None = None) -> None:
        rows.append({"name": name, "n": count, "seconds": seconds, "per_s": count / seconds, "unit": unit, "floor_per_s": floor})

    add("math is_equivalent, plain numbers (fast path)", n(20000), bench_math_fast(n(20000)), "checks", FAST_PATH_FLOOR_PER_S)
    add("math step: extract + verify, tiny-world completions", n(5000), bench_math_step(n(5000)), "steps")
    start_s, mv_s = bench_math_verify(n(200))
    add("math-verify worker start (once per worker)", 1, start_s, "starts")
    add("math compare via math-verify worker (expressions)", n(200), mv_s, "checks")
    add("instruction_following step", n(5000), bench_if_step(n(5000)), "steps")
    add("rewards combine: format + budget + length", n(20000), bench_rewards(n(20000)), "trajectories")

    table = Table(title=f"verifier throughput (pinned to CPU {pinned})" if pinned is not None else "verifier throughput")
    for col, justify in (("benchmark", "left"), ("n", "right"), ("seconds", "right"), ("per second", "right"), ("floor", "right")):
        table.add_column(col, justify=justify)
    ok = True
    for r in rows:
        floor = ""
        if r["floor_per_s"] is not None:
            met = r["per_s"] >= r["floor_per_s"]
            ok &= met
            floor = f"[{'green' if met else 'red'}]>= {r['floor_per_s']:,.0f} {'met' if met else 'MISSED'}[/]"
        table.add_row(r["name"], f"{r['n']:,}", f"{r['seconds']:.3f}", f"{r['per_s']:,.0f} {r['unit']}/s", floor)
    Console(width=150).print(table)

    comparison = before_after(n(5000), args.repeats, args.baseline_ref)
    cmp_table = Table(title=f"math plain numbers: {args.baseline_ref} (before) vs working tree (after), median of {args.repeats} interleaved")
    for col in ("case", "n", "before us/item (min)", "after us/item (min)", "after/before median (min)", "per repeat"):
        cmp_table.add_column(col, justify="left" if col == "case" else "right")
    for r in comparison:
        ok &= r["min_ratio"] <= 2.0 or not r["gated"]
        cmp_table.add_row(r["name"], f"{r['n']:,}", f"{r['before_us']:.2f} ({r['before_min_us']:.2f})", f"{r['after_us']:.2f} ({r['after_min_us']:.2f})",
                          f"{r['ratio']:.2f} ({r['min_ratio']:.2f})", " ".join(f"{x:.2f}" for x in r["per_repeat_ratio"]))
    Console(width=150).print(cmp_table)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "pinned_cpu": pinned,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "results": rows,
        "before_after": {"baseline_ref": args.baseline_ref, "rows": comparison},
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
