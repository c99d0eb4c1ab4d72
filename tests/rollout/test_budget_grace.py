"""The grace window after a thinking budget (``budget_grace_fraction``): where ``</think>`` is forced.

The exact-position tests drive ``run_episode`` with a scripted policy: a ``GenerateFn`` that
emits a fixed token sequence and honours ``max_tokens`` and ``stop_token_ids`` as vLLM does. A
real engine cannot be told to write a newline at a chosen position, and these tests are about
the episode runner's arithmetic, not the model. The last test runs the same rule through the
in-process vLLM engine (real stop tokens, sampled text) and checks it on every trajectory.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from align.config.schema import SamplingConfig
from align.data import truncate_thinking
from align.reasoning import ReasoningMode
from envs.base import Task
from rollout.batcher import engine_generate_fn
from rollout.chat import ChatTokens, newline_token_ids
from rollout.collect import collect
from rollout.episode import grace_tokens, run_episode
from rollout.types import GenOutput, GenRequest, Trajectory
from tests.rollout.test_episode import OneShotEnv, check_stream, make_tasks

BUDGET = 16


@pytest.fixture(scope="module")
def chat(tokenizer) -> ChatTokens:
    return ChatTokens.from_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def words(tokenizer, chat) -> tuple[int, int, int]:
    """(a thinking token, a newline token, an answer token), none of them special."""
    newline = newline_token_ids(tokenizer)
    assert newline and tokenizer.decode([newline[0]]) == "\n", newline
    plain = [i for i in tokenizer("What is 4", add_special_tokens=False)["input_ids"] if i not in newline]
    return plain[0], newline[0], plain[-1]


def scripted(script: list[int], prompt_len: list[int], chat: ChatTokens, answer: int):
    """A policy that writes ``script`` as its thinking, then, once ``</think>`` is in the stream, ``answer`` and eos."""

    async def step(req: GenRequest) -> GenOutput:
        done = req.prompt_token_ids[prompt_len[0] :] if prompt_len else []
        if not prompt_len:
            prompt_len.append(len(req.prompt_token_ids))
        out: list[int] = []
        while len(out) < req.max_tokens:
            stream = done + out
            if chat.think_close_id in stream:
                tok = answer if stream[-1] == chat.think_close_id else chat.eos_id
            else:
                tok = script[len(stream)] if len(stream) < len(script) else chat.eos_id
            out.append(tok)
            if tok in req.stop_token_ids or tok == chat.eos_id:
                return GenOutput(out, [-1.0] * len(out), "stop", weight_versions=[0] * len(out))
        return GenOutput(out, [-1.0] * len(out), "length", weight_versions=[0] * len(out))

    return step


def episode(tokenizer, chat, words, fraction: float, newline_at: int | None = None, close_at: int | None = None,
            script: list[int] | None = None) -> Trajectory:  # fmt: skip
    a, nl, answer = words
    script = list(script) if script is not None else [a] * 64
    if newline_at is not None:
        script[newline_at] = nl
    if close_at is not None:
        script[close_at] = chat.think_close_id
    task = Task(id="t", env="oneshot", prompt=[{"role": "user", "content": "What is 4?"}], answer=4)
    sampling = SamplingConfig(max_new_tokens=48, max_answer_tokens=8)
    generate = scripted(script, [], chat, answer)
    t = asyncio.run(run_episode(OneShotEnv(), task, ReasoningMode(True, BUDGET), tokenizer, generate, sampling, 1, seed=0,
                                budget_grace_fraction=fraction))  # fmt: skip
    check_stream(t)
    return t


def forced_at(t: Trajectory) -> int:
    (i,) = [i for i, m in enumerate(t.loss_mask) if m == 0]
    return i


def test_grace_tokens_rounds_up():
    assert [grace_tokens(b, 0.1) for b in (16, 32, 64, 128)] == [2, 4, 7, 13]
    assert grace_tokens(16, 0.5) == 8 and grace_tokens(16, 1.0) == 16 and grace_tokens(16, 0.0) == 0
    with pytest.raises(ValueError, match="budget_grace_fraction"):
        grace_tokens(16, 1.5)


def test_no_grace_forces_at_the_budget_even_with_a_newline_just_after(tokenizer, chat, words):
    t = episode(tokenizer, chat, words, 0.0, newline_at=BUDGET)
    assert t.forced_close and forced_at(t) == BUDGET and t.thinking_tokens == BUDGET


@pytest.mark.parametrize("newline_at", [BUDGET, BUDGET + 3, BUDGET + 6])
def test_grace_closes_right_after_the_first_newline_in_the_window(tokenizer, chat, words, newline_at):
    t = episode(tokenizer, chat, words, 0.5, newline_at=newline_at)  # window: 8 tokens after the 16
    i = forced_at(t)
    assert t.forced_close and i == newline_at + 1
    assert t.completion_ids[i - 1] == words[1] and t.completion_ids[i] == chat.think_close_id
    assert t.thinking_tokens == newline_at + 1
    assert t.completion_ids[i + 1 :] == [words[2], chat.eos_id]  # the answer follows the forced close


@pytest.mark.parametrize("newline_at", [None, 5, BUDGET + 8, BUDGET + 20])
def test_grace_without_a_newline_in_the_window_forces_at_its_end(tokenizer, chat, words, newline_at):
    # A newline before the budget or after the window does not count.
    t = episode(tokenizer, chat, words, 0.5, newline_at=newline_at)
    assert t.forced_close and forced_at(t) == BUDGET + 8 and t.thinking_tokens == BUDGET + 8


def test_model_closing_inside_the_window_is_not_forced(tokenizer, chat, words):
    t = episode(tokenizer, chat, words, 0.5, close_at=BUDGET + 2)
    assert not t.forced_close and all(m == 1 for m in t.loss_mask)
    assert t.completion_ids.index(chat.think_close_id) == BUDGET + 2 and t.thinking_tokens == BUDGET + 2


@pytest.mark.parametrize("opens", [True, False])
def test_a_trace_of_exactly_the_budget_closes_by_itself(tokenizer, chat, words, opens):
    """The budget counts the tokens between ``<think>`` and ``</think>``: the model gets all ``budget``
    of them plus a slot to close (and one for the ``<think>`` it writes), and is not forced."""
    head = [chat.think_open_id] if opens else []
    t = episode(tokenizer, chat, words, 0.0, script=head + [words[0]] * BUDGET + [chat.think_close_id])
    assert not t.forced_close and all(m == 1 for m in t.loss_mask) and t.thinking_tokens == BUDGET
    assert t.completion_ids == head + [words[0]] * BUDGET + [chat.think_close_id, words[2], chat.eos_id]


@pytest.mark.parametrize("opens", [True, False])
def test_one_token_over_the_budget_is_dropped_and_the_close_forced_in_its_place(tokenizer, chat, words, opens):
    head = [chat.think_open_id] if opens else []
    t = episode(tokenizer, chat, words, 0.0, script=head + [words[0]] * (BUDGET + 1) + [chat.think_close_id])
    assert t.forced_close and forced_at(t) == len(head) + BUDGET and t.thinking_tokens == BUDGET
    assert t.completion_ids == head + [words[0]] * BUDGET + [chat.think_close_id, words[2], chat.eos_id]


def test_a_close_right_after_the_grace_window_is_the_models(tokenizer, chat, words):
    script = [chat.think_open_id] + [words[0]] * (BUDGET + 8) + [chat.think_close_id]
    t = episode(tokenizer, chat, words, 0.5, script=script)  # window: 8 tokens after the 16
    assert not t.forced_close and t.thinking_tokens == BUDGET + 8
    t = episode(tokenizer, chat, words, 0.5, script=[chat.think_open_id] + [words[0]] * 64)
    assert t.forced_close and forced_at(t) == 1 + BUDGET + 8 and t.thinking_tokens == BUDGET + 8


def test_an_sft_trace_cut_at_the_budget_is_not_forced_in_a_rollout(tokenizer, chat, words):
    """SFT budget data and rollouts count the budget alike: a demonstration that
    ``truncate_thinking`` cut at 16 tokens, replayed as the policy, closes by itself at budget 16.
    The cut leaves a margin drawn per row (0 to a quarter of the budget); the longest cut over a few
    rows has none, and is the case that matters: no margin left, and still not forced."""
    trace = " ".join(f"{i}+{i}={2 * i}." for i in range(1, 12))
    row = {"messages": [{"role": "user", "content": "What is 4?"}, {"role": "assistant", "content": f"<think>{trace}</think>4"}]}
    scripts = []
    for seed in range(20):
        cut = truncate_thinking(row, tokenizer, random.Random(seed), budget=BUDGET)
        assert cut is not None and cut["thinking_budget"] == BUDGET
        content = cut["messages"][1]["content"]
        scripts.append(tokenizer(content[: content.index("</think>") + len("</think>")], add_special_tokens=False)["input_ids"])
    script = max(scripts, key=len)
    assert script[0] == chat.think_open_id and len(script) == 1 + BUDGET + 1
    t = episode(tokenizer, chat, words, 0.0, script=script)
    assert not t.forced_close and t.thinking_tokens == BUDGET and t.completion_ids[: len(script)] == script


def test_grace_with_a_real_engine(tiny_checkpoint, tokenizer, chat, make_engine):
    """Random weights at temperature 1: every forced close sits at the budget + window's end, or right
    after the first newline token past the budget; thinking never exceeds budget + window."""
    engine = make_engine(tiny_checkpoint)
    newline = set(newline_token_ids(tokenizer))
    grace = grace_tokens(BUDGET, 1.0)
    tasks = [(t, ReasoningMode(True, BUDGET)) for t in make_tasks("oneshot", 16)]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=64, max_answer_tokens=8)
    groups = asyncio.run(collect({"oneshot": OneShotEnv()}, tasks, 4, tokenizer=tokenizer, generate=engine_generate_fn(engine),
                                 sampling=sampling, max_turns=1, seed=0, budget_grace_fraction=1.0))  # fmt: skip
    at_newline = at_end = 0
    for t in (t for g in groups for t in g):
        check_stream(t)
        assert t.thinking_tokens <= BUDGET + grace
        if not t.forced_close:
            continue
        i = forced_at(t)
        ids = t.completion_ids
        start = ids.index(chat.think_open_id) + 1 if chat.think_open_id in ids[:i] else 0
        j = i - start  # thinking tokens before the forced close
        assert chat.think_close_id not in ids[:i] and not newline & set(ids[start + BUDGET : i - 1]) and j == t.thinking_tokens
        if j == BUDGET + grace and ids[i - 1] not in newline:
            at_end += 1
        elif j > BUDGET:
            assert j <= BUDGET + grace and ids[i - 1] in newline, (i, ids[:i])
            at_newline += 1
        else:  # a <think> written late in the first sample, after other text, leaves less of the budget to think in
            assert start > 1, (i, ids[:i])
    assert at_newline > 0 and at_end > 0, (at_newline, at_end)
