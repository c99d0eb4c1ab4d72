"""``align rl --recipe nano3-multienv-tiny`` for two steps on one GPU, as a user runs it (learner and engine share it).

A file of its own, so that one pytest invocation of it fits one device call: the run starts Ray,
a vLLM engine and a DeepSpeed learner, and with an empty Triton cache its engine warms up and its
first learner step compiles and autotunes mamba_ssm's Triton kernels (104 s for the learner on an
H200, README "GPUs"). Run after ``test_rl_gpu.py`` on the same machine, the learner's bf16 kernels
come from Triton's on-disk cache (same tiny policy). On CPU the same command takes 45 s.

``ALIGN_TEST_RUN_BUDGET_S`` bounds the run (default 900 s): set below the device call's limit, a
run that would overrun fails with its log (the start-up line splits the time) instead of being
killed together with pytest's summary. The log's key lines and tail are printed in every outcome.

Needs vllm (GPU build), ray, deepspeed and a CUDA GPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parents[2]
BUDGET_S = float(os.environ.get("ALIGN_TEST_RUN_BUDGET_S", 900))
KEY_LINES = ("start-up ", "step 1/", "step 2/", "eval step", "weight sync", "learner 0:", "Error", "Traceback")  # Ray prefixes actor lines


def _report(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    key = [line[:400] for line in text.splitlines() if any(k in line for k in KEY_LINES)][:40]
    return "key lines:\n" + "\n".join(key) + f"\n--- log tail ({log}):\n" + text[-4000:]


def _stop(proc: subprocess.Popen) -> None:
    """Stop the run's whole process group (its Ray processes with it): SIGTERM, 30 s, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _run(cmd: list[str], log: Path, budget_s: float) -> int:
    """Run ``cmd`` in a session of its own with its output in ``log``; past ``budget_s``, stop it and
    fail with the log. Interrupted (Ctrl-C, ``timeout -s INT``, pytest-timeout), stop it too: its own
    session does not get the terminal's or ``timeout``'s signals, and it holds GPU memory."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            pytest.fail(f"align rl did not finish within {budget_s:.0f} s (ALIGN_TEST_RUN_BUDGET_S)\n{_report(log)}")
        except BaseException:
            _stop(proc)
            raise


@pytest.mark.timeout(BUDGET_S + 100)
def test_align_rl_two_steps_on_one_gpu(tmp_path) -> None:
    run_dir = tmp_path / "run"
    overrides = [
        "init_from=null", "tokenizer.vocab_size=512", "grpo.max_steps=2", "grpo.eval_every_steps=100", "checkpoint.every_steps=100",
        "grpo.prompts_per_step=8", "grpo.generations_per_prompt=4", "learner.micro_batch_size_per_device=16", "learner.precision=auto",
        "cluster.gpus_per_learner=0.5", "cluster.gpus_per_rollout_engine=0.4", "rollout.gpu_memory_utilization=0.2",
        "rollout.kv_cache_memory_mb=null", "reasoning.eval_budgets=[16]", f"output_dir={run_dir}",
    ]  # fmt: skip
    log = tmp_path / "align-rl.log"
    rc = _run([sys.executable, "-m", "align.cli", "rl", "--recipe", "nano3-multienv-tiny", *overrides], log, BUDGET_S)
    print(_report(log))
    assert rc == 0, f"align rl exited {rc}"
    stdout = log.read_text(errors="replace")
    assert "weight sync: cuda_ipc" in stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    train = {r["step"]: r for r in rows if r["split"] == "train"}
    assert sorted(train) == [1, 2]
    assert sorted(r["step"] for r in rows if r["split"] == "eval") == [0, 2]  # held-out eval before training and after the last step
    for r in train.values():
        assert r["rollout_tokens_per_s"] > 0 and r["time_sync_s"] >= 0
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and math.isfinite(r["mismatch_kl"])
    print({s: {k: round(v, 4) for k, v in r.items() if k.startswith(("time_", "rollout_tokens", "mismatch", "loss", "reward"))} for s, r in train.items()})
    assert (run_dir / "final" / "config.json").is_file()
