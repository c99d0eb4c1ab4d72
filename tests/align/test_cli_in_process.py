"""``align rl --in-process``: the learner and the vLLM engine in the CLI's own process, without Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from align import cli
from align.quiet import QUIET_ENV, VERBOSE_ENV

ROOT = Path(__file__).resolve().parents[2]
# A fresh tiny policy, one single-turn environment, few tokens (as tests/e2e/test_rl_e2e.py's QUICK).
QUICK = [
    "init_from=null", "tokenizer.vocab_size=512", "envs=[{name: math, num_train: 32, num_eval: 4}]",
    "grpo.prompts_per_step=2", "grpo.generations_per_prompt=4", "learner.micro_batch_size_per_device=8",
    "rollout.sampling.max_new_tokens=16", "rollout.sampling.max_answer_tokens=8", "rollout.kv_cache_memory_mb=128",
    "reasoning.eval_budgets=[]", "grpo.max_refill_rounds=0", "grpo.max_steps=1", "grpo.eval_every_steps=100",
]  # fmt: skip


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("cluster.num_learners=2 learner.micro_batch_size_per_device=4", "cluster.num_learners is 2"),
        ("cluster.num_rollout_engines=2", "cluster.num_rollout_engines is 2"),
    ],
)
def test_a_recipe_one_process_cannot_hold_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys, override, named) -> None:
    for key in (*QUIET_ENV, VERBOSE_ENV):  # cli.main sets them in os.environ
        monkeypatch.delenv(key, raising=False)
    rc = cli.main(["rl", "--recipe", "nano3-multienv-tiny", "--in-process", *QUICK, *override.split(), f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.replace("\n", " ")
    assert rc == cli.EXIT_BAD_INPUT
    assert "--in-process runs one learner and one rollout engine" in err and named in err
    assert "Traceback" not in err


def test_an_rl_job_runs_in_one_process_without_ray(tmp_path: Path) -> None:
    """The real command, in a fresh interpreter: one step, no Ray session (Ray would write one under RAY_TMPDIR)."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(tmp_path / "ray")}
    cmd = [sys.executable, "-m", "align.cli", "rl", "--recipe", "nano3-multienv-tiny", "--in-process", *QUICK, f"output_dir={run}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    step = next(r for r in rows if r["split"] == "train" and r["step"] == 1)
    assert step["grad_norm"] > 0  # the learner took a real step
    assert step["mismatch_abs_logp"] < 0.02  # on the engine's samples, with the same weights
    assert "start-up" in proc.stdout
    assert not (tmp_path / "ray").exists()
    assert (run / "final" / "config.json").is_file()
