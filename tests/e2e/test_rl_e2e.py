"""`align rl` end to end: one full step in-process, and through Ray with kill -9 and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from align.algorithms.rl.tasks import TaskMixer, load_tasks
from align.cli import main
from align.config import load_recipe
from envs.registry import make_env

ROOT = Path(__file__).resolve().parents[2]
# Tiny and quick: a fresh tiny policy (no SFT start), two single-turn environments, few tokens.
QUICK = [
    "init_from=null", "tokenizer.vocab_size=512",
    "envs=[{name: math, num_train: 64, num_eval: 4}, {name: instruction_following, num_train: 64, num_eval: 4}]",
    "grpo.prompts_per_step=4", "grpo.generations_per_prompt=4", "learner.micro_batch_size_per_device=8",
    "rollout.sampling.max_new_tokens=24", "rollout.sampling.max_answer_tokens=8", "rollout.kv_cache_memory_mb=128",
    "reasoning.eval_budgets=[16]", "grpo.max_refill_rounds=0",
]  # fmt: skip


def _records(run_dir: Path, split: str) -> dict[int, dict]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l]
    return {r["step"]: r for r in rows if r["split"] == split}


def kill_9_after_step(args: list[str], env: dict[str, str], run_dir: Path, step: int, timeout_s: float) -> None:
    """Run ``args`` in its own session and SIGKILL the whole session once ``step`` is in its metrics."""
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + timeout_s
        while not (run_dir / "metrics.jsonl").exists() or step not in _records(run_dir, "train"):
            assert time.time() < deadline and proc.poll() is None, f"the run ended or stalled before step {step}"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# Every thread's stack, and exit, at 240 s: a hang fails with where it hung, before the 480 s
# subprocess limit and pytest's 600 s one (which would lose the child's output).
IN_PROCESS = """
import faulthandler; faulthandler.dump_traceback_later(240, exit=True)
import sys
from align.algorithms.rl.driver import run
from align.config import load_recipe
args = [a for a in sys.argv[1:] if a != "--resume"]
sys.exit(run(load_recipe("nano3-multienv-tiny", args), resume="--resume" in sys.argv, in_process=True))
"""


def test_one_full_rl_step_in_process(tmp_path: Path) -> None:
    """The driver without Ray (learner and vLLM engine in one process). That process is a fresh
    interpreter, not pytest's: both leave process-wide state (torch.distributed, vLLM) behind."""
    # Two optimizer updates of 8 sequences each (grpo.mini_batches), both against one old-log-prob pass.
    args = [*QUICK, "grpo.max_steps=1", "grpo.eval_every_steps=1", "grpo.max_seq_logprob_error=2", "grpo.mini_batches=2", f"output_dir={tmp_path}"]
    proc = subprocess.run([sys.executable, "-c", IN_PROCESS, *args], capture_output=True, text=True, timeout=480, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "a pass of their own before each step; 2 update(s) per step" in proc.stdout, proc.stdout[-2000:]
    step = _records(tmp_path, "train")[1]
    for key in ("reward", "math/reward", "instruction_following/reward", "time_rollout_s", "time_learner_s", "time_sync_s",
                "mismatch_kl", "grad_norm", "seq_masked_share", "math/seq_masked_share", "instruction_following/seq_masked_share"):  # fmt: skip
        assert key in step, key
    assert step["grad_norm"] > 0  # the learner took a real step
    # Learner and vLLM agree on the sampled tokens' log-probs (same weights, same temperature) up
    # to float32 kernel differences (~4e-3 seen); a misaligned shift or temperature gives ~1.
    assert step["mismatch_abs_logp"] < 0.02 and step["mismatch_kl"] < 1e-3
    assert step["seq_masked_share"] == 0.0  # so no sequence comes near the guard's factor of 2
    evals = _records(tmp_path, "eval")
    assert set(evals) == {0, 1} and "math/no_think/toggle_compliance" in evals[1]
    samples = [json.loads(l) for l in (tmp_path / "trajectories.jsonl").read_text().splitlines()]
    assert {s["env"] for s in samples} == {"math", "instruction_following"}
    assert (tmp_path / "final" / "config.json").is_file()


def test_rl_on_public_format_data_paths_in_process(tmp_path: Path) -> None:
    """Two environments read shipped example files in public formats (GSM8K-style math with a
    column mapping, IFEval-style instructions) through ``envs[].data_path``; one full step."""
    math_file = tmp_path / "gsm8k_renamed.jsonl"
    rows = [json.loads(l) for l in (ROOT / "envs/math/data/gsm8k_style.jsonl").read_text().splitlines()]
    math_file.write_text("".join(json.dumps({"q": r["question"], "answer": r["answer"]}) + "\n" for r in rows))
    ifeval = ROOT / "envs/instruction_following/data/ifeval_style.jsonl"
    envs = (f"envs=[{{name: math, data_path: '{math_file}', columns: {{prompt: q}}, num_eval: 1}}, "
            f"{{name: instruction_following, data_path: '{ifeval}', num_eval: 1}}]")  # fmt: skip
    args = [*QUICK, envs, "grpo.dynamic_sampling=false", "grpo.overlong_filtering=false", "grpo.max_steps=1", "grpo.eval_every_steps=1",
            f"output_dir={tmp_path / 'run'}"]  # every group trains, so the step has a gradient
    proc = subprocess.run([sys.executable, "-c", IN_PROCESS, *args], capture_output=True, text=True, timeout=480, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = _records(tmp_path / "run", "train")[1]
    assert {"math/reward", "instruction_following/reward"} <= set(step) and step["grad_norm"] > 0
    samples = [json.loads(l) for l in (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()]
    ids = {s["env"]: set() for s in samples}
    for s in samples:
        ids[s["env"]].add(s["task"])
    # Only the files' rows were used: GSM8K rows get ids by position, IFEval rows keep their keys.
    assert ids["math"] <= {f"math-{i}" for i in range(5)} and ids["instruction_following"] <= {str(k) for k in range(1001, 1006)}
    assert ids["math"] and ids["instruction_following"]


def test_kl_and_off_policy_overlap_in_process(tmp_path: Path) -> None:
    """KL to a separate frozen reference and one-step overlap in one run, checkpointed every step.
    Groups are not filtered, so every step's KL is measured on all 16 trajectories. (Resuming an
    overlapped run: the slow variant of the kill -9 test below.)"""
    args = [*QUICK, "grpo.kl_coef=0.05", "grpo.off_policy_overlap=true", "grpo.max_staleness=1", "grpo.dynamic_sampling=false",
            "grpo.overlong_filtering=false", "learner.lr=1e-3", "learner.lr_schedule=constant", "grpo.eval_every_steps=100",
            "checkpoint.every_steps=1", "grpo.max_steps=3", f"output_dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", IN_PROCESS, *args], capture_output=True, text=True, timeout=480, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = _records(tmp_path, "train")
    assert sorted(train) == [1, 2, 3]
    # Step 1 trains on the start weights' rollout; later steps on a rollout made during the previous update.
    assert [train[s]["staleness"] for s in (1, 2, 3)] == [0.0, 1.0, 1.0]
    # The policy starts as the reference (KL 0 up to float noise) and moves away from it.
    assert train[1]["kl"] < 1e-6
    assert train[3]["kl"] > 1e-4 and train[3]["kl"] > 100 * max(train[1]["kl"], 1e-9)
    assert {"math/kl", "instruction_following/kl"} <= set(train[3])
    # The checkpoint after update 2 resumes the task streams after step 2's prompts, not after the
    # prompts the overlapped rollout of step 3 had already drawn.
    state = json.loads((tmp_path / "checkpoints" / "step_000002" / "state.json").read_text())
    assert sum(state["tasks"]["position"].values()) == 2 * 4
    assert set(_records(tmp_path, "eval")) == {0, 3} and (tmp_path / "final" / "config.json").is_file()


def test_full_scale_recipe_says_what_is_missing(capsys) -> None:
    assert main(["rl", "--recipe", "nano3-multienv"]) == 2
    err = capsys.readouterr().err
    assert "16 GPUs" in err and "this machine has 0" in err and "align rl --recipe nano3-multienv-tiny" in err


def _mixer_at(args: list[str], state: dict) -> TaskMixer:
    """The RL driver's task mixer for the recipe in ``args``, restored from a checkpoint's state."""
    r = load_recipe("nano3-multienv-tiny", [a for a in args if "=" in a and not a.startswith("-")]).recipe
    envs = {s.name: make_env(s.name, s.params) for s in r.envs}
    tasks = {s.name: load_tasks(s, envs[s.name], s.num_train, r.seed, "train") for s in r.envs}
    mixer = TaskMixer(tasks, {s.name: s.weight for s in r.envs}, r.seed, r.grpo.curriculum)
    mixer.load_state_dict(state["tasks"])
    return mixer


# The tiny MoE hybrid (Nemotron 3 Nano's layer kinds; model.tiny's expert defaults: 4 routed
# experts, top-2, one shared expert), with routing replay on: the learners replay vLLM's experts.
MOE = ["model.tiny.layers_block_type=ME*ME*", "rollout.return_routed_experts=true", "grpo.routing_replay=rollout"]


@pytest.mark.parametrize(
    ("overlap", "policy"),
    [(False, []), pytest.param(True, [], marks=pytest.mark.slow), (False, MOE)],
    ids=["on_policy", "overlap", "moe_replay"],
)
def test_rl_through_ray_resumes_after_kill_9(tmp_path: Path, overlap: bool, policy: list[str]) -> None:
    """On-policy, with the pass-rate curriculum on: its state must survive the kill like the streams'."""
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "align.cli", "rl", "--recipe", "nano3-multienv-tiny", *QUICK, *policy, "grpo.max_steps=4",
            "grpo.eval_every_steps=100", "checkpoint.every_steps=2", f"grpo.off_policy_overlap={str(overlap).lower()}",
            f"grpo.curriculum.enabled={str(not overlap).lower()}", "grpo.curriculum.weighting=learnability",
            f"output_dir={run_dir}"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    kill_9_after_step(args, env, run_dir, 3, timeout_s=400)
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000002"
    state = json.loads((run_dir / "checkpoints" / "step_000002" / "state.json").read_text())
    assert sum(state["tasks"]["position"].values()) == 2 * 4  # two steps of 4 prompts taken from the streams
    before_kill = [json.loads(l) for l in (run_dir / "trajectories.jsonl").read_text().splitlines() if l.endswith("}")]
    if not overlap:
        # The pass rates of exactly the tasks of steps 1-2 ride in the checkpoint.
        seen = {(s["env"], s["task"]) for s in before_kill if s["step"] <= 2}
        assert {(env, task) for env, tasks in state["tasks"]["curriculum"].items() for task in tasks} == seen
    resumed = subprocess.run(args + ["--resume"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 2" in resumed.stdout
    train = _records(run_dir, "train")
    assert sorted(train) == [1, 2, 3, 4]
    # Overlap: the first rollout after the resume is made from the checkpoint's weights.
    assert [train[s]["staleness"] for s in (1, 2, 3, 4)] == ([0.0, 1.0, 0.0, 1.0] if overlap else [0.0] * 4)
    # The resume cut trajectories.jsonl back to step 2: step 3, logged before the kill, is there once.
    steps = [json.loads(l)["step"] for l in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    assert {s: steps.count(s) for s in (1, 2, 3, 4)} == {s: 4 for s in (1, 2, 3, 4)}  # one sample per group of 4 prompts
    if not overlap:
        # The resumed step 3 drew what the checkpoint's curriculum state draws (pass rates and positions).
        after = [json.loads(l) for l in (run_dir / "trajectories.jsonl").read_text().splitlines()]
        assert sorted(s["task"] for s in after if s["step"] == 3) == sorted(t.id for t in _mixer_at(args, state).next(4))
        assert {"math/tasks_seen", "math/pass_rate_hist/0.00-0.20", "instruction_following/tasks_active"} <= set(train[4])
        assert train[4]["math/tasks_seen"] >= train[2]["math/tasks_seen"] > 0
    config = json.loads((run_dir / "final" / "config.json").read_text())
    assert config["layers_block_type"].count("moe") == (2 if policy else 0)
    if policy:
        _assert_router_frozen_and_experts_trained(run_dir / "init", run_dir / "final")


def _assert_router_frozen_and_experts_trained(init: Path, final: Path) -> None:
    """The router (frozen in RL) is the start checkpoint's after four updates across the kill and
    resume; the routed experts moved."""
    from safetensors.torch import load_file

    before, after = load_file(str(init / "model.safetensors")), load_file(str(final / "model.safetensors"))
    routers = [k for k in before if k.endswith(".mixer.gate.weight")]
    experts = [k for k in before if ".mixer.experts." in k]
    assert len(routers) == 2 and experts and set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in routers), "a frozen router moved"
    assert max(float((after[k] - before[k]).abs().max()) for k in experts) > 0, "no routed expert trained"


@pytest.mark.slow
def test_moe_policy_runs_with_routing_replay_off_and_on(tmp_path: Path) -> None:
    """`align rl --recipe nano3-multienv-tiny` on a fresh MoE policy, replay off then on, in bf16
    on both sides (float32 learner and vLLM route every token alike: nothing to replay), on the
    recipe's own batch (16 prompts x 8, 96 new tokens; eval sets cut). Step 1 is the same rollout in
    both runs (same seed and weights), so its mismatch differs only by the replay. Seen 2026-11-30:
    mismatch_kl 9.96e-6 off, 2.13e-6 on. (On QUICK's 4 x 4 x 24 tokens
    replay did not help: 8.9e-7 off, 1.1e-6 on.)"""
    envs = ("envs=[{name: math, weight: 0.4, num_train: 2000, num_eval: 16}, {name: code, weight: 0.2, num_train: 500, num_eval: 8}, "
            "{name: tool_use, weight: 0.2, num_train: 500, num_eval: 8}, {name: instruction_following, weight: 0.2, num_train: 500, num_eval: 8}]")  # fmt: skip
    runs = {}
    for replay in ("off", "rollout"):
        out = tmp_path / replay
        args = [sys.executable, "-m", "align.cli", "rl", "--recipe", "nano3-multienv-tiny", "init_from=null", *MOE, envs,
                f"grpo.routing_replay={replay}", "learner.precision=bf16", "grpo.max_steps=1", f"output_dir={out}"]  # fmt: skip
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[replay] = _records(out, "train")[1]
    off, on = runs["off"], runs["rollout"]
    assert on["reward"] == off["reward"]  # the same trajectories
    assert off["mismatch_kl"] > 0 and on["mismatch_kl"] < off["mismatch_kl"] / 2, (off["mismatch_kl"], on["mismatch_kl"])
    assert on["seq_masked_share"] <= off["seq_masked_share"]
