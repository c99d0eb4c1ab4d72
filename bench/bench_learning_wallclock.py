"""Learning per wall-clock: held-out math accuracy after equal wall time, align GRPO vs TRL GRPOTrainer.

Usage: ``.venv/bin/python bench/bench_learning_wallclock.py [--quick] [--budget-s 240] [--eval-tasks 128]``

Both sides start from ``runs/tiny-sft/final`` and train GRPO on the same math task stream
(``envs.math``, align's task order) with the settings ``bench/bench_vs_trl.py`` holds equal
(prompts per step, generations, max completion tokens, temperature, reward, clip range, no KL,
lr 2e-4 constant, Adam betas, grad clipping, fp32, one learner process, one torch thread for
TRL's process as for align's learner actor). Each gets the same wall-clock budget, counted from
launching its process (startup included):

- align (``align rl``) writes a checkpoint after every step (keeping 3); at the budget its
  process group is frozen (SIGSTOP) and then killed, and the newest checkpoint written within
  the budget is the result (the checkpoint writes are inside align's budget: their cost is
  reported). The driver does not stop on SIGINT, hence the freeze.
- TRL (this file's ``--worker`` mode) stops at the end of the step after which another typical
  step would overrun the budget, then saves (outside the budget).

Then the start checkpoint and both results are scored on the same held-out math tasks
(generated with the evaluation seed, none of them among the 2,000 training prompts), greedy,
``/think``, through align's evaluator (vLLM), and the table gives accuracy and steps done.

Limits: one run per side (a 4-minute budget each does not leave room for repeats in ten
minutes), sequential, on a shared machine: the load average is recorded for each; rerun to see
the spread. The stop rules differ by at most one step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_trl import ALIGN, PY, ROOT, START, Settings, StepTimer, align_grpo_recipe, ensure_start, job_env, load1, run_header, trl_grpo_trainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_learning_wallclock.json"
RUNS = ROOT / "runs" / "bench_learning_wallclock"


# ----------------------------------------------------------------------------- align side


def run_align(s: Settings, budget_s: float, out: Path) -> dict[str, Any]:
    """``align rl`` until the budget runs out, then the last checkpoint as an HF folder."""
    if out.exists():
        shutil.rmtree(out)
    recipe = align_grpo_recipe(s, out, max_steps=100_000, checkpoint_every=1, keep_last=3)
    log = out.with_suffix(".log")
    la = load1()
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen([ALIGN, "rl", "--recipe", str(recipe)], cwd=ROOT, env=job_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        while time.time() - t0 < budget_s and proc.poll() is None:
            time.sleep(0.1)
        # Freeze the driver (and everything in its process group) at the budget: an interrupt
        # is not enough (the driver goes on; measured: 14 more steps in 30 s), and a running
        # driver would keep publishing and pruning checkpoints.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGSTOP)
        stopped_at = time.time() - t0
        try:
            written = {c: (c / "state.json").stat().st_mtime - t0 for c in (out / "checkpoints").glob("step_*") if (c / "state.json").is_file()}
            within = [c for c, at in written.items() if at <= budget_s]
            if not within:
                raise RuntimeError(f"align wrote no checkpoint within {budget_s:.0f} s; see {log}")
            chosen = max(within, key=lambda c: written[c])
            step = int(json.loads((chosen / "state.json").read_text())["step"])
            final = out / "final_from_checkpoint"
            _checkpoint_to_hf(chosen, final)
        finally:
            _stop(proc)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    train = sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["step"])
    times = [r["time"] for r in train]
    # Between two metric rows: one step plus the checkpoint written after the first of them.
    ckpt = [b - a - r["time_step_s"] for a, b, r in zip(times, times[1:], train[1:])]
    return {
        "side": "align", "steps": step, "weights_at_s": written[chosen], "stopped_at_s": stopped_at, "load_1m_start": la, "load_1m_end": load1(),
        "steps_finished_after_budget": max(r["step"] for r in train) - step if train else 0,
        "first_step_end_s": times[0] - t0 if times else None,
        "median_step_s": statistics.median(r["time_step_s"] for r in train[1:]) if len(train) > 1 else None,
        "median_checkpoint_s": statistics.median(ckpt) if ckpt else None,
        "train_reward": [float(r["reward"]) for r in train], "final": str(final), "log": str(log),
    }  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    """Kill the driver's process group (the job this script started; Ray's processes share its fate)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _checkpoint_to_hf(ckpt: Path, out: Path) -> None:
    """The DeepSpeed checkpoint's module weights (HF names) saved as an HF folder with the start's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    states = sorted(ckpt.rglob("mp_rank_00_model_states.pt"))
    if not states:
        raise FileNotFoundError(f"no DeepSpeed model states under {ckpt}")
    sd = torch.load(states[0], map_location="cpu", weights_only=False)["module"]
    model = AutoModelForCausalLM.from_pretrained(START, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(START).save_pretrained(out)


# ----------------------------------------------------------------------------- TRL side


def trl_worker(s: Settings, budget_s: float, out: Path, launch: float) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    timer = StepTimer(budget_s=budget_s, launch=launch)
    max_steps = int(budget_s / 0.2) + 1  # an upper bound; the callback stops at the budget
    trainer = trl_grpo_trainer(s, out / "trainer", use_vllm=False, max_steps=max_steps, timer=timer)
    trainer.train()
    weights_at = time.time() - launch
    final = out / "final"
    trainer.save_model(str(final))
    AutoTokenizer.from_pretrained(START).save_pretrained(final)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    return {
        "side": "trl-1t", "steps": len(timer.steps), "weights_at_s": weights_at,
        "first_step_end_s": (timer.first_end - launch) if timer.first_end else None,
        "median_step_s": statistics.median(timer.steps[1:]) if len(timer.steps) > 1 else None,
        "train_reward": [float(l["reward"]) for l in timer.logs if "reward" in l], "final": str(final),
    }  # fmt: skip


def run_trl(s: Settings, budget_s: float, out: Path) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "settings.json").write_text(json.dumps(asdict(s)))
    log = out.with_suffix(".log")
    la = load1()
    t0 = time.time()
    cmd = [PY, str(Path(__file__).resolve()), "--worker", "--settings", str(out / "settings.json"), "--out", str(out), "--budget-s", str(budget_s), "--launch", repr(t0)]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=job_env(), stdout=f, stderr=subprocess.STDOUT, timeout=budget_s + 600)
    if proc.returncode != 0:
        raise RuntimeError(f"TRL GRPO failed (exit {proc.returncode}); see {log}")
    res = json.loads((out / "result.json").read_text())
    res.update(load_1m_start=la, load_1m_end=load1(), log=str(log), stopped_at_s=res["weights_at_s"])
    return res


# ----------------------------------------------------------------------------- evaluation


def eval_worker(paths: list[str], n_tasks: int, seed: int, out: Path) -> None:
    """Greedy /think accuracy of each checkpoint on the same held-out math tasks (align's evaluator)."""
    import json as _json

    from align.config.schema import SamplingConfig
    from align.evaluate import EvalMode, evaluate_checkpoint
    from align.heldout import heldout_tasks
    from align.reasoning import ReasoningMode
    from envs.math import MathEnv

    env = MathEnv()
    train = {_json.dumps(t.prompt) for t in env.generate(2000, seed)}
    tasks = [t for t in heldout_tasks({"math": env}, {"math": 2 * n_tasks}, set(), seed) if _json.dumps(t.prompt) not in train][:n_tasks]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=96, max_answer_tokens=32)
    scores = {}
    for p in paths:
        summary = evaluate_checkpoint(p, {"math": env}, tasks, [EvalMode("think", ReasoningMode(True))], sampling, max_turns=1, seed=seed)
        scores[p] = summary["math"]["think"]
    out.write_text(_json.dumps({"n_tasks": len(tasks), "scores": scores}))


def evaluate(paths: list[str], n_tasks: int, seed: int) -> dict[str, Any]:
    out = RUNS / "eval.json"
    cmd = [PY, str(Path(__file__).resolve()), "--eval-worker", *paths, "--eval-tasks", str(n_tasks), "--out", str(out)]
    with open(RUNS / "eval.log", "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=job_env(), stdout=f, stderr=subprocess.STDOUT, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"evaluation failed (exit {proc.returncode}); see {RUNS / 'eval.log'}")
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 60 s budget each, 32 held-out tasks")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget per side (default 240)")
    ap.add_argument("--eval-tasks", type=int, default=None, help="held-out math tasks (default 128)")
    ap.add_argument("--trl-first", action="store_true", help="run TRL before align (to pair with a default run); writes *_trl_first.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--eval-worker", nargs="+", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--settings", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--launch", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    budget = args.budget_s or (60.0 if args.quick else 240.0)
    n_tasks = args.eval_tasks or (32 if args.quick else 128)

    if args.worker:
        s = Settings(**json.loads(Path(args.settings).read_text()))
        res = trl_worker(s, budget, Path(args.out), args.launch)
        (Path(args.out) / "result.json").write_text(json.dumps(res))
        return 0
    if args.eval_worker:
        eval_worker(args.eval_worker, n_tasks, Settings().seed, Path(args.out))
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console()
    s = Settings()
    RUNS.mkdir(parents=True, exist_ok=True)
    ensure_start(console)
    sides: dict[str, dict[str, Any]] = {}
    for side in (["trl-1t", "align"] if args.trl_first else ["align", "trl-1t"]):
        console.print(f"[bold]{side}[/] GRPO for {budget:.0f} s (load {load1():.2f}) ...")
        sides[side] = run_align(s, budget, RUNS / "align") if side == "align" else run_trl(s, budget, RUNS / "trl")
        console.print(f"  {sides[side]['steps']} steps, weights at {sides[side]['weights_at_s']:.1f} s")
    sides = {k: sides[k] for k in ("align", "trl-1t")}
    console.print(f"evaluating on {n_tasks} held-out tasks (load {load1():.2f}) ...")
    ev = evaluate([str(START), sides["align"]["final"], sides["trl-1t"]["final"]], n_tasks, s.seed)

    table = Table(title=f"held-out math accuracy after {budget:.0f} s of wall clock (greedy, /think, {ev['n_tasks']} tasks)")
    for col in ("policy", "accuracy", "GRPO steps", "weights at s", "time to 1st step end s", "median step s", "load 1m"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    start = ev["scores"][str(START)]
    table.add_row("start (runs/tiny-sft/final)", f"{start['accuracy']:.3f}", "0", "", "", "", "")
    rows = [{"policy": "start", "accuracy": start["accuracy"], "n": start["n"]}]
    for side, r in sides.items():
        sc = ev["scores"][r["final"]]
        rows.append({"policy": side, "accuracy": sc["accuracy"], "n": sc["n"], "steps": r["steps"], "weights_at_s": r["weights_at_s"],
                     "first_step_end_s": r["first_step_end_s"], "median_step_s": r["median_step_s"], "load_1m": r["load_1m_start"],
                     "median_checkpoint_s": r.get("median_checkpoint_s")})  # fmt: skip
        table.add_row(side, f"{sc['accuracy']:.3f}", str(r["steps"]), f"{r['weights_at_s']:.1f}", f"{r['first_step_end_s']:.1f}",
                      f"{r['median_step_s']:.3f}" if r["median_step_s"] else "-", f"{r['load_1m_start']:.1f}")  # fmt: skip
    console.print(table)
    if sides["align"].get("median_checkpoint_s") is not None:
        console.print(f"align's per-step checkpoint (inside its budget): median {sides['align']['median_checkpoint_s']:.3f} s")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        **run_header(),
        "budget_s": budget,
        "order": list(sides) if not args.trl_first else ["trl-1t", "align"],
        "settings": asdict(s),
        "eval": {"n_tasks": ev["n_tasks"], "decoding": "greedy", "mode": "/think", "max_new_tokens": 96, "scores": ev["scores"]},
        "table": rows,
        "runs": sides,
    }
    out_path = RESULTS.with_name(RESULTS.stem + ("_quick" if args.quick else "") + ("_trl_first" if args.trl_first else "") + ".json")
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
