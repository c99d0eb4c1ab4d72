"""Step-level blame (``StepResult.info["blame"]``) becomes the completion tokens that spell it.

The episode test drives ``run_episode`` with a scripted policy (a ``GenerateFn`` that writes a
fixed completion): which tokens get blamed is the episode runner's arithmetic, and a sampled
model would not write a chosen false step.
"""

from __future__ import annotations

import asyncio

import pytest

from align.config.schema import SamplingConfig
from align.reasoning import ReasoningMode
from envs.base import Task
from envs.math import MathEnv
from rollout.chat import ChatTokens
from rollout.episode import blame_tokens, run_episode
from rollout.types import GenOutput, GenRequest


def test_blame_tokens_spell_the_blamed_characters(tokenizer):
    ids = tokenizer.encode("<think>47+38: 7+8=15, 4+3+1=9. 95</think>\\boxed{95}", add_special_tokens=False)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    start = text.index("=9") + 1
    i, j = blame_tokens(tokenizer, ids, (start, start + 1))
    assert tokenizer.decode(ids[i:j], skip_special_tokens=True) == "9"
    start = text.index("15")
    i, j = blame_tokens(tokenizer, ids, [start, start + 2])
    assert tokenizer.decode(ids[i:j], skip_special_tokens=True) == "15"  # digits are tokens of their own


@pytest.mark.parametrize("span", [(5, 3), (0, 10**6), (-1, 2), "3-4", (1.0, 2.0), (1, 2, 3)])
def test_a_malformed_blame_is_dropped_not_raised(tokenizer, span):
    assert blame_tokens(tokenizer, tokenizer.encode("7+1=9", add_special_tokens=False), span) is None


def test_the_episode_maps_math_blame_to_the_false_result(tokenizer):
    chat = ChatTokens.from_tokenizer(tokenizer)
    thinking = tokenizer.encode("74+11: 4+1=5, 7+1=9. 95", add_special_tokens=False)
    answer = tokenizer.encode("\\boxed{95}", add_special_tokens=False)
    script = [*thinking, chat.think_close_id, *answer, chat.eos_id]

    async def policy(req: GenRequest) -> GenOutput:  # writes the script, whatever the prompt
        return GenOutput(script, [-1.0] * len(script), "stop", weight_versions=[0] * len(script))

    task = Task(id="t", env="math", prompt=[{"role": "user", "content": "What is 74+11?"}], answer="85")
    sampling = SamplingConfig(max_new_tokens=64)
    t = asyncio.run(run_episode(MathEnv(), task, ReasoningMode(True, None), tokenizer, policy, sampling, 1, seed=0))
    assert t.correct is False and "blame" in t.info
    i, j = t.info["blame_tokens"]
    assert tokenizer.decode(t.completion_ids[i:j], skip_special_tokens=True) == "9"
    assert tokenizer.decode(t.completion_ids[:i], skip_special_tokens=True).endswith("7+1=")
