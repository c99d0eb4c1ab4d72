"""`grpo.mode=async` end to end (in-process learner and vLLM engine): kill -9 mid-run, `--resume`,
and the prompt-id ledger shows no prompt skipped and none trained twice."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_rl_e2e import IN_PROCESS, QUICK, ROOT, _records, kill_9_after_step

STALENESS = 2
PROMPTS = 4  # QUICK's grpo.prompts_per_step; with max_refill_rounds=0 every step takes exactly 4 groups


def _ledger(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines() if line.endswith("}")]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step is in the ledger twice: {steps}"
    return {r["step"]: r for r in rows}


def test_async_rl_resumes_after_kill_9_with_no_prompt_skipped_or_repeated(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [sys.executable, "-c", IN_PROCESS, *QUICK, "grpo.mode=async", f"grpo.max_staleness={STALENESS}", "grpo.max_steps=6",
            "grpo.eval_every_steps=100", "checkpoint.every_steps=2", f"output_dir={run_dir}"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    kill_9_after_step(args, env, run_dir, 3, timeout_s=300)
    before = _ledger(run_dir)
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000002"
    state = json.loads((run_dir / "checkpoints" / "step_000002" / "state.json").read_text())
    stream = state["tasks"]["stream"]
    # The checkpoint was taken with prompts in flight or queued beyond the 8 that steps 1-2 trained.
    open_ids = [i for i, _, _ in stream["open"]]
    assert open_ids and open_ids == list(range(2 * PROMPTS, 2 * PROMPTS + len(open_ids))) and stream["next_index"] >= open_ids[-1] + 1

    resumed = subprocess.run([*args, "--resume"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = _ledger(run_dir)
    assert sorted(after) == [1, 2, 3, 4, 5, 6]
    # Every prompt id of the stream, each once, in stream order: nothing skipped, nothing twice.
    trained = [i for s in sorted(after) for i in after[s]["prompts"]]
    assert trained == list(range(6 * PROMPTS))
    # The resumed step 3 took the same prompts (ids and tasks) as the killed run's step 3.
    assert (after[3]["prompts"], after[3]["tasks"]) == (before[3]["prompts"], before[3]["tasks"])
    assert after[1] == before[1] and after[2] == before[2]

    train = _records(run_dir, "train")
    assert sorted(train) == [1, 2, 3, 4, 5, 6]
    for step, m in train.items():
        assert 0 <= m["staleness"] <= STALENESS, (step, m["staleness"])
        ages = {a: m[f"staleness_hist/{a}"] for a in range(STALENESS + 1)}
        assert sum(ages.values()) > 0 and max(a for a, n in ages.items() if n) == m["staleness"]
        for key in ("queue_depth", "groups_in_flight", "engine_idle_share", "learner_idle_share", "tokens_per_s", "groups_stale_dropped"):
            assert key in m, (step, key)
        assert 0 <= m["engine_idle_share"] <= 1 and 0 <= m["learner_idle_share"] <= 1 and m["tokens_per_s"] >= 0
        assert m["groups_stale_dropped"] == 0
    # A step may see no engine call at all (the queue held its groups and the staleness gate kept
    # the producer waiting: engine idle share 1); over the run the engines generated.
    assert sum(m["tokens_per_s"] for m in train.values()) > 0 and min(m["engine_idle_share"] for m in train.values()) < 1
    # The producer ran ahead of the learner: some step trained on tokens of older weights.
    assert max(m["staleness"] for m in train.values()) >= 1
    assert (run_dir / "final" / "config.json").is_file()


def test_async_rl_with_the_greedy_baseline(tmp_path: Path) -> None:
    """`grpo.baseline=greedy` through the async producer: each group plays one greedy episode more,
    scored as its baseline and logged per environment, and trains on the sampled ones only."""
    args = [sys.executable, "-c", IN_PROCESS, *QUICK, "grpo.mode=async", "grpo.baseline=greedy", "grpo.dynamic_sampling=false",
            "grpo.max_steps=2", "grpo.eval_every_steps=100", f"output_dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(args, env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = _records(tmp_path, "train")
    assert sorted(train) == [1, 2]
    for m in train.values():
        for env in ("math", "instruction_following"):
            assert 0.0 <= m[f"{env}/greedy_accuracy"] <= 1.0
