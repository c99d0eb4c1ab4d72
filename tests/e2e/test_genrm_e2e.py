"""The ``genrm`` reward's judge engines and the policy's engines in one Ray session, each in
placement-group bundles of their own, judging a group by circular comparison through the actor.

The judge here is an untrained tiny model: its verdicts are malformed, which is the path this
test checks end to end (every comparison counted as a parse failure, every sample failed and
given the neutral group mean, nothing raised). Verdict parsing on well-formed judgements is
tested in tests/rewards/test_genrm.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from align.config.schema import ClusterConfig, ModelConfig, RolloutConfig, TokenizerConfig
from align.init_checkpoint import prepare_initial_checkpoint
from rewards.testing import trajectory

G = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [f"What is {a}+{b}? [[A={a % 5 + 1} B={b % 5 + 1}]] Answer A: | Answer B: |" for a in range(40) for b in range(5)]
    return prepare_initial_checkpoint(ModelConfig(), TokenizerConfig(vocab_size=512), tmp_path_factory.mktemp("genrm") / "tiny", texts=texts)


def test_judge_and_policy_engines_share_one_ray_session(checkpoint: Path) -> None:
    import ray

    from align.ray_start import ray_cpus
    from align.cluster import RolloutGroup, init_ray
    from align.config import load_recipe
    from rewards.genrm.reward import GenRMParams, GenRMReward

    # The shipped RLHF recipe sizes its Ray session for the judge: learner + KL reference + policy engine + judge engine.
    assert ray_cpus(load_recipe("tiny-rlhf").recipe) == 4
    init_ray(num_cpus=3)
    try:
        rollout = RolloutConfig(max_model_len=512, kv_cache_memory_mb=64)
        policy = RolloutGroup(ClusterConfig(num_rollout_engines=1), rollout, str(checkpoint), seed=0)
        reward = GenRMReward(GenRMParams(path=str(checkpoint), order="both", num_engines=1, max_model_len=512, kv_cache_memory_mb=64))
        judges = reward.engines()
        # Two placement groups, one CPU bundle each, and the third slot (the learner's) still free.
        tables = [ray.util.placement_group_table(g._pg) for g in (policy, judges)]
        assert [t["bundles"] for t in tables] == [{0: {"CPU": 1.0}}, {0: {"CPU": 1.0}}]
        assert all(t["state"] == "CREATED" for t in tables)
        assert ray.available_resources().get("CPU") == 1.0
        assert policy.engines[0] is not judges.engines[0]

        batch = [trajectory(f"<think>t</think>{k}", completion_tokens=3 + k) for k in range(G)]  # one group: one task id
        rewards = reward.score(batch)
        m = reward.step_metrics()
        assert m["judge_calls"] == 2 * G  # circular, both orders
        assert m["judge_tokens"] > 2 * G * 20  # each call holds a rendered judge prompt
        # An untrained judge writes no verdict: every comparison fails, every sample gets the neutral value.
        assert m["judge_parse_failures"] == 2 * G and m["judge_failed_samples"] == G
        assert rewards == [0.0] * G
        assert reward.step_metrics() == {}  # reset after reading
        reward.close()
        policy.shutdown()
        deadline = time.monotonic() + 30  # Ray returns the bundles asynchronously
        while ray.available_resources().get("CPU") != 3.0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU") == 3.0
    finally:
        ray.shutdown()


# Every thread's stack, and exit, at 240 s: a hang fails with where it hung, before the 480 s
# subprocess limit and pytest's 600 s one (which would lose the child's output).
IN_PROCESS = """
import faulthandler; faulthandler.dump_traceback_later(240, exit=True)
import sys
from align.algorithms.rl.driver import run
from align.config import load_recipe
sys.exit(run(load_recipe("tiny-rlhf", sys.argv[1:]), in_process=True))
"""


def test_rlhf_step_logs_judge_cost_and_win_rate(tmp_path: Path, checkpoint: Path) -> None:
    """One GRPO step of tiny-rlhf in-process (policy and judge engines in one process, no Ray):
    the step's metrics carry the judge's calls and tokens, and summary.json the final-vs-start verdict."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    args = [
        "init_from=null", "tokenizer.vocab_size=512", f"output_dir={tmp_path / 'run'}",
        "envs=[{name: chat, num_train: 16, num_eval: 4}]", "grpo.max_steps=1", "grpo.eval_every_steps=1",
        "grpo.prompts_per_step=2", "grpo.generations_per_prompt=4", "learner.micro_batch_size_per_device=8",
        "grpo.max_refill_rounds=0", "grpo.dynamic_sampling=false", "rollout.sampling.max_new_tokens=16",
        "rollout.kv_cache_memory_mb=128",
        f"rewards=[{{name: genrm, params: {{path: '{checkpoint}', num_engines: 0, kv_cache_memory_mb: 64, max_new_tokens: 8}}}}]",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", IN_PROCESS, *args], capture_output=True, text=True, timeout=480, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if line]
    step = next(r for r in rows if r["split"] == "train" and r["step"] == 1)
    assert step["judge_calls"] == 2 * 2 * 4  # 2 prompts x circular both orders over 4 answers
    assert step["judge_tokens"] > step["judge_calls"] * 20
    # The untrained judge writes no verdict: every call fails, the run goes on with neutral rewards.
    assert step["judge_parse_failures"] == step["judge_calls"] and step["judge_failed_samples"] == 2 * 4
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    verdict = summary["genrm_win_rate"]
    assert verdict["prompts"] == 4 and verdict["prompts_unjudged"] == 4 and verdict["length_start"] > 0 and verdict["length_final"] > 0
