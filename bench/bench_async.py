"""Held-out accuracy against wall clock: synchronous GRPO vs asynchronous (``grpo.mode=async``) at
``max_staleness`` N = 1 and 2, on the tiny world (CPU).

Usage: ``.venv/bin/python bench/bench_async.py [--quick] [--steps 12] [--every 4] [--eval-tasks 64]``

Each configuration is one ``align rl`` job (learner and vLLM engine as Ray actors, one CPU each)
from the same start checkpoint (``runs/tiny-sft/final``, built by ``align sft --recipe tiny-sft``
when missing, as ``bench/bench_vs_trl.py`` does), with the same seed, recipe (math, the GRPO settings
``bench_vs_trl.py`` holds equal, no dynamic sampling) and number of steps; only ``grpo.mode`` and
``grpo.max_staleness`` differ. Every ``--every`` steps a checkpoint is written (its Hugging Face folder
``hf/``); its wall time is counted from launching the job (start-up included, the checkpoint writes
too, alike for every configuration). Afterwards every checkpoint and the start are scored on the
same held-out math tasks, greedy, ``/think`` (align's evaluator, :func:`eval_worker`), in one
process, outside the timed runs.

The table gives, per configuration, accuracy at each checkpoint with its wall time, the median step
time after the first step, and the per-step means of the async metrics (engine and learner idle
shares, generated tokens/s, the oldest token's age). The JSON (``bench/results/bench_async*.json``)
keeps every step's metrics.

Limits: one run per configuration, sequential, on a shared 2-core machine (load average recorded
per run); the learner and the engine each get one core, so async can at best overlap the two. The
tiny policy's episodes are short and uniform, the case where async gains least (no long tail for the
engines to fill). Accuracy on 64 tasks moves by about 0.06 per task-set noise (one standard error).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_trl import ALIGN, PY, ROOT, START, Settings, align_grpo_recipe, ensure_start, job_env, load1, run_header  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_async.json"
RUNS = ROOT / "runs" / "bench_async"
CONFIGS: dict[str, list[str]] = {
    "sync": ["grpo.mode=sync"],
    "async N=1": ["grpo.mode=async", "grpo.max_staleness=1"],
    "async N=2": ["grpo.mode=async", "grpo.max_staleness=2"],
}
ASYNC_KEYS = ("engine_idle_share", "learner_idle_share", "tokens_per_s", "staleness", "queue_depth")


def eval_worker(paths: list[str], n_tasks: int, seed: int, out: Path) -> None:
    """Greedy /think accuracy of each checkpoint on the same held-out math tasks (none among the 2,000 training prompts)."""
    from align.config.schema import SamplingConfig
    from align.evaluate import EvalMode, evaluate_checkpoint
    from align.heldout import heldout_tasks, task_key
    from align.reasoning import ReasoningMode
    from envs.math import MathEnv

    env = MathEnv()
    tasks = heldout_tasks({"math": env}, {"math": n_tasks}, {task_key(env, t) for t in env.generate(2000, seed)}, seed)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=96, max_answer_tokens=32)
    scores = {p: evaluate_checkpoint(p, {"math": env}, tasks, [EvalMode("think", ReasoningMode(True))], sampling, max_turns=1, seed=seed)["math"]["think"]
              for p in paths}  # fmt: skip
    out.write_text(json.dumps({"n_tasks": len(tasks), "scores": scores}))


def run_config(name: str, overrides: list[str], s: Settings, steps: int, every: int) -> dict[str, Any]:
    out = RUNS / name.replace(" ", "_").replace("=", "")
    recipe = align_grpo_recipe(s, out, max_steps=steps, checkpoint_every=every, keep_last=1000)
    log = out.with_suffix(".log")
    la = load1()
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run([ALIGN, "rl", "--recipe", str(recipe), *overrides], cwd=ROOT, env=job_env(), stdout=f, stderr=subprocess.STDOUT, timeout=1800)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: align rl failed (exit {proc.returncode}); see {log}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["step"])
    points = [{"step": r["step"], "time_s": r["time"] - t0, "hf": str(out / "checkpoints" / f"step_{r['step']:06d}" / "hf")}
              for r in train if r["step"] % every == 0 and r["step"] < steps]  # fmt: skip
    points.append({"step": steps, "time_s": train[-1]["time"] - t0, "hf": str(out / "final")})  # written after the last step
    means = {k: statistics.mean(float(r[k]) for r in train) for k in ASYNC_KEYS if all(k in r for r in train)}
    return {
        "name": name, "overrides": overrides, "wall_s": wall, "load_1m_start": la, "load_1m_end": load1(), "log": str(log),
        "first_step_end_s": train[0]["time"] - t0, "median_step_s": statistics.median(r["time_step_s"] for r in train[1:]),
        "means": means, "points": points, "steps": [{k: v for k, v in r.items() if not k.startswith(("math/pass", "eval"))} for r in train],
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 steps, checkpoints every 3, 32 held-out tasks")
    ap.add_argument("--steps", type=int, default=None, help="GRPO steps per configuration (default 12)")
    ap.add_argument("--every", type=int, default=None, help="checkpoint (and score) every this many steps (default 4)")
    ap.add_argument("--eval-tasks", type=int, default=None, help="held-out math tasks (default 64)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of: {', '.join(CONFIGS)}")
    ap.add_argument("--score-only", action="store_true", help="score the checkpoints of the last runs again (after a failed scoring)")
    ap.add_argument("--eval-worker", nargs="+", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    steps = args.steps or (6 if args.quick else 12)
    every = args.every or (3 if args.quick else 4)
    n_tasks = args.eval_tasks or (32 if args.quick else 64)
    s = Settings()
    if args.eval_worker:
        eval_worker(args.eval_worker, n_tasks, s.seed, Path(args.out))
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    RUNS.mkdir(parents=True, exist_ok=True)
    ensure_start(console)
    runs_file = RUNS / "runs.json"
    runs = json.loads(runs_file.read_text()) if args.score_only else []
    for name in [] if args.score_only else args.configs.split(","):
        console.print(f"[bold]{name}[/]: {steps} GRPO steps (load {load1():.2f}) ...")
        runs.append(run_config(name, CONFIGS[name], s, steps, every))
        console.print(f"  {runs[-1]['wall_s']:.1f} s, median step {runs[-1]['median_step_s']:.2f} s")
        runs_file.write_text(json.dumps(runs))
    paths = [str(START)] + [p["hf"] for r in runs for p in r["points"]]
    console.print(f"scoring {len(paths)} checkpoints on {n_tasks} held-out tasks (load {load1():.2f}) ...")
    ev_out = RUNS / "eval.json"
    with open(RUNS / "eval.log", "w") as f:
        cmd = [PY, str(Path(__file__).resolve()), "--eval-worker", *paths, "--eval-tasks", str(n_tasks), "--out", str(ev_out)]
        if subprocess.run(cmd, cwd=ROOT, env=job_env(), stdout=f, stderr=subprocess.STDOUT, timeout=1800).returncode != 0:
            raise SystemExit(f"evaluation failed; see {RUNS / 'eval.log'}")
    ev = json.loads(ev_out.read_text())
    for r in runs:
        for p in r["points"]:
            p["accuracy"] = ev["scores"][p["hf"]]["accuracy"]

    start_acc = ev["scores"][str(START)]["accuracy"]
    table = Table(title=f"held-out math accuracy vs wall clock ({ev['n_tasks']} tasks, greedy, /think; start {start_acc:.3f}), {steps} steps each")
    for col in ("config", "accuracy @ step (wall s)", "wall s", "median step s", "engine idle", "learner idle", "tok/s", "mean staleness", "load 1m"):
        table.add_column(col, justify="left" if col in ("config", "accuracy @ step (wall s)") else "right")
    for r in runs:
        m = r["means"]
        curve = "  ".join(f"{p['accuracy']:.3f}@{p['step']} ({p['time_s']:.0f})" for p in r["points"])
        table.add_row(r["name"], curve, f"{r['wall_s']:.0f}", f"{r['median_step_s']:.2f}", f"{m.get('engine_idle_share', float('nan')):.2f}",
                      f"{m.get('learner_idle_share', float('nan')):.2f}", f"{m.get('tokens_per_s', float('nan')):.0f}",
                      f"{m.get('staleness', 0.0):.2f}", f"{r['load_1m_start']:.2f}")  # fmt: skip
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {**run_header(), "steps": steps, "every": every, "settings": asdict(s), "start_accuracy": start_acc,
              "eval": {"n_tasks": ev["n_tasks"], "decoding": "greedy", "mode": "/think"}, "runs": runs}  # fmt: skip
    out_path = RESULTS.with_name(RESULTS.stem + ("_quick" if args.quick else "") + ".json")
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
