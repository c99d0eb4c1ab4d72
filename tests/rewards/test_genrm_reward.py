"""GenRMReward.score end to end except vLLM: grouping by task, circular calls, verdicts -> rewards, cost metrics.

The judge engine is a scripted stand-in (an untrained tiny model writes no verdicts, so a real
engine cannot produce the hand-computed case); it reads the rendered judge prompt back from the
token ids, as vLLM would receive it, and answers with a verdict in tokens. The real engines run
in tests/e2e/test_genrm_e2e.py.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from align.config.schema import ModelConfig, TokenizerConfig
from align.init_checkpoint import prepare_initial_checkpoint
from align.models import load_tokenizer
from envs.base import Task
from rewards.genrm.reward import GenRMParams, GenRMReward
from rewards.testing import trajectory
from rollout.types import GenOutput, GenRequest


@pytest.fixture(scope="module")
def judge_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = ["<think>x</think>[[A=5 B=1]] Answer A: | good bad junk"] * 50
    return prepare_initial_checkpoint(ModelConfig(), TokenizerConfig(vocab_size=400), tmp_path_factory.mktemp("judge") / "tiny", texts=texts)


class ScriptedJudge:
    """Scores 5 for an answer "good", 1 for "bad"; a pair with "junk" in it gets a malformed reply."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.requests: list[GenRequest] = []
        self.output_tokens = 0

    async def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        self.requests += requests
        outs = []
        for r in requests:
            prompt = self.tokenizer.decode(r.prompt_token_ids, skip_special_tokens=True)
            a, b = re.search(r"Answer A:\n\| (\w+)\nAnswer B:\n\| (\w+)", prompt).groups()
            score = {"good": 5, "bad": 1}
            text = "<think>x</think>no verdict" if "junk" in (a, b) else f"<think>x</think>[[A={score[a]} B={score[b]}]]"
            ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
            self.output_tokens += len(ids)
            outs.append(GenOutput(ids, [0.0] * len(ids), "stop", r.request_id))
        return outs


def test_score_groups_by_task_and_aggregates_by_hand(judge_path: Path) -> None:
    reward = GenRMReward(GenRMParams(path=str(judge_path), order="both", num_engines=0))
    reward._tokenizer = load_tokenizer(judge_path)
    fake = ScriptedJudge(reward._tokenizer)
    reward._engines = fake  # the scripted stand-in for the judge's RolloutGroup
    other = Task(id="t1", env="chat", prompt=[{"role": "user", "content": "Say hi."}])
    group_a = [trajectory(f"<think>plan</think>{w}", completion_tokens=5) for w in ("good", "bad", "good", "junk")]
    group_b = [replace(trajectory(f"<think>plan</think>{w}"), task=other) for w in ("bad", "good")]
    batch = [group_a[0], group_b[0], group_a[1], group_a[2], group_b[1], group_a[3]]  # interleaved: grouped by task id
    rewards = reward.score(batch)
    # Group a (both orders, 8 calls): (0,1), (1,0), (1,2), (2,1) parse: good 5, bad 1;
    # the 4 calls with "junk" (3) do not: 3 is a failed sample and gets mean(5, 1, 5) = 11/3.
    # Group b (G = 2: (0,1) and (1,0)): bad 1, good 5.
    assert rewards == pytest.approx([5.0, 1.0, 1.0, 5.0, 5.0, 11 / 3])
    m = reward.step_metrics()
    assert (m["judge_calls"], m["judge_parse_failures"], m["judge_failed_samples"]) == (10, 4, 1)
    assert m["judge_tokens"] == sum(len(r.prompt_token_ids) for r in fake.requests) + fake.output_tokens
    # The thinking of the policy's answers never reaches the judge.
    assert all("plan" not in reward._tokenizer.decode(r.prompt_token_ids) for r in fake.requests)


def test_random_order_makes_g_calls(judge_path: Path) -> None:
    reward = GenRMReward(GenRMParams(path=str(judge_path), order="random", num_engines=0, seed=1))
    reward._tokenizer = load_tokenizer(judge_path)
    reward._engines = ScriptedJudge(reward._tokenizer)
    rewards = reward.score([trajectory(f"<think>p</think>{w}") for w in ("good", "bad", "good", "bad", "good")])
    assert rewards == [5.0, 1.0, 5.0, 1.0, 5.0]  # a consistent judge: the order does not matter
    assert reward.step_metrics()["judge_calls"] == 5


def test_verifier_gate_and_env_routing_in_score(judge_path: Path) -> None:
    """A chat group whose verifier disagrees with the judge is gated; an open-ended group keeps the
    judge's scores; a math group is not judged at all (``envs: [chat]``), so its env reward stands."""
    reward = GenRMReward(GenRMParams(path=str(judge_path), order="both", num_engines=0, envs=["chat"]))
    reward._tokenizer = load_tokenizer(judge_path)
    fake = ScriptedJudge(reward._tokenizer)
    reward._engines = fake
    chat = Task(id="c1", env="chat", prompt=[{"role": "user", "content": "What is 3+4?"}])
    open_ended = Task(id="c2", env="chat", prompt=[{"role": "user", "content": "Say hi."}])
    math = Task(id="m1", env="math", prompt=[{"role": "user", "content": "What is 2+2?"}])
    verified = [replace(trajectory(w), task=chat, correct=c) for w, c in (("good", False), ("bad", True), ("good", True), ("bad", False))]
    chat_free = [replace(trajectory(w), task=open_ended) for w in ("bad", "good")]  # correct None: no verifier
    maths = [replace(trajectory(w), task=math, correct=c) for w, c in (("good", False), ("bad", True))]
    rewards = reward.score(verified + chat_free + maths)
    # Judged 5, 1, 5, 1; right answers (1, 2) keep 1 and 5, wrong ones (0, 3) get the floor 1 - 1 = 0.
    assert rewards == pytest.approx([0.0, 1.0, 5.0, 0.0, 1.0, 5.0, None, None])
    m = reward.step_metrics()
    assert m["judge_calls"] == 8 + 2  # the math group never reached the judge
    # 4 (right, wrong) pairs; judged wrong >= right in 3: right 1 vs wrong 5 and 1 (a tie counts), right 5 vs wrong 5.
    assert (m["judge_gate_pairs"], m["judge_gate_overrides"]) == (4, 3)
    # Gate off: the judge's own scores, the wrong "good" answer above the right "bad" one.
    off = GenRMReward(GenRMParams(path=str(judge_path), order="both", num_engines=0, verifier_gate=False))
    off._tokenizer, off._engines = reward._tokenizer, fake
    assert off.score(verified) == pytest.approx([5.0, 1.0, 5.0, 1.0])


def test_missing_judge_folder_is_a_clear_error(tmp_path: Path) -> None:
    from align.plugins import PluginParamsError

    with pytest.raises(PluginParamsError, match="align rm --recipe tiny-genrm"):
        GenRMReward(GenRMParams(path=str(tmp_path / "nope")))
