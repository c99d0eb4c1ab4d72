"""Sandbox cost: start-up (median wall of a trivial program) and executions/s at concurrency 1 and 2.

    .venv/bin/python bench/bench_sandbox.py [--runs 60]

Prints a rich table and writes bench/results/sandbox.json. For scale, it also times a bare
``python -I -S -c pass`` subprocess: the difference is what bwrap and the bootstrap add.
Numbers depend on the machine's load; the JSON records the core count and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from envs.sandbox import SandboxConfig, SandboxPool, default_concurrency, find_bwrap, run_program, sandbox_problem, sandbox_python

TRIVIAL = "print(1)"
OUT = Path(__file__).resolve().parent / "results" / "sandbox.json"


def median_ms(samples: list[float]) -> float:
    return round(1000 * statistics.median(samples), 2)


def startup(runs: int, config: SandboxConfig) -> dict[str, float]:
    walls = []
    for _ in range(runs):
        t = time.perf_counter()
        result = run_program(TRIVIAL, config=config)
        walls.append(time.perf_counter() - t)
        assert result.status == "ok", result
    walls.sort()
    return {"median_ms": median_ms(walls), "p10_ms": round(1000 * walls[len(walls) // 10], 2), "p90_ms": round(1000 * walls[9 * len(walls) // 10], 2)}


def bare_python(runs: int) -> float:
    python = sandbox_python(SandboxConfig())
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([python, "-I", "-S", "-c", "pass"], check=True)
        samples.append(time.perf_counter() - t)
    return median_ms(samples)


def throughput(runs: int, concurrency: int, config: SandboxConfig) -> float:
    with SandboxPool(config, max_concurrency=concurrency) as pool:
        pool.run(TRIVIAL)  # warm the pool's threads
        t = time.perf_counter()
        futures = [pool.submit(TRIVIAL) for _ in range(runs)]
        assert all(f.result().status == "ok" for f in futures)
        return round(runs / (time.perf_counter() - t), 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=60)
    args = p.parse_args()
    problem = sandbox_problem()
    if problem:
        raise SystemExit(f"sandbox unavailable: {problem}")
    config = SandboxConfig(timeout_s=10.0)
    run_program(TRIVIAL, config=config)  # first run pays for the probe and cold caches
    results = {
        "machine": {
            "cores": default_concurrency(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "bwrap": find_bwrap(),
            "as_root": os.getuid() == 0,
        },
        "runs": args.runs,
        "bare_python_startup_median_ms": bare_python(args.runs),
        "sandbox_startup": startup(args.runs, config),
        "executions_per_s": {str(c): throughput(args.runs, c, config) for c in (1, 2)},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")

    table = Table(title=f"sandbox ({results['machine']['cores']} cores, load {results['machine']['load_avg_1m']})", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("bare `python -I -S -c pass`, median", f"{results['bare_python_startup_median_ms']} ms")
    s = results["sandbox_startup"]
    table.add_row("sandboxed print(1), median wall", f"{s['median_ms']} ms")
    table.add_row("sandboxed print(1), p10 / p90", f"{s['p10_ms']} / {s['p90_ms']} ms")
    for c, rate in results["executions_per_s"].items():
        table.add_row(f"executions/s, concurrency {c}", f"{rate}")
    Console().print(table)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
