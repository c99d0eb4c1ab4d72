"""Episodes: one task played against the policy, turn by turn, as a stream of token ids.

Many episodes run as asyncio tasks; each awaits one generation at a time, sent on its own to
the engine (which batches whatever runs at each decoding step), or through a
:class:`rollout.batcher.Batcher` that turns the requests that are waiting into one engine call. Environments are
awaited concurrently too (``envs.base.safe_step``), so a slow verifier does not hold up the
other episodes' generations.

Token ids are kept end to end (rendering in :mod:`rollout.chat`): policy tokens are appended
as sampled and observations as the chat template renders them, so the learner scores exactly
the tokens the sampler produced.

Reasoning control (see ``align/reasoning.py``): with thinking on and a budget, a turn first
thinks for at most the budget left, stopping at ``</think>``. The budget counts thinking tokens,
the ones between ``<think>`` and ``</think>``, as the SFT budget data cuts them
(``align.data.truncate_thinking``): a trace of exactly ``budget`` tokens closes by itself. If
the budget runs out, a ``</think>`` is forced (loss mask 0) and the answer is generated in a
second phase of at most ``sampling.max_answer_tokens``. The budget covers the whole episode: every turn's thinking
counts against it, so ``thinking_tokens <= budget`` always holds without a grace window.

Grace window (``budget_grace_fraction`` > 0, as NVIDIA's budget control, whose NIM default is
0.1): when the budget runs out inside the think block, thinking goes on for at most
``ceil(fraction * budget)`` more tokens and stops at the first token that contains a newline;
``</think>`` is then forced after it (or at the end of the window, if no newline came), so
the thinking is cut at a line boundary rather than mid-sentence. A ``</think>`` the model writes
itself in the window closes the block as usual (not forced). The window is an episode-wide
allowance too, so ``thinking_tokens <= budget + ceil(fraction * budget)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from align.config.schema import SamplingConfig
from align.reasoning import THINK_CLOSE, ReasoningMode, round_budget
from envs.base import Environment, StepResult, Task, safe_step
from rollout.chat import ChatTokens, count_thinking, newline_token_ids, observation_ids, render_prompt_ids
from rollout.routing import pad_routes
from rollout.types import FinishReason, GenOutput, GenRequest, Trajectory

if TYPE_CHECKING:  # only annotated: the rollout engines' actors and the driver's early spawn skip transformers' import
    from transformers import PreTrainedTokenizerBase


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from ``parts`` (same parts, same seed, on every machine and run)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


async def run_episode(
    env: Environment,
    task: Task,
    mode: ReasoningMode,
    tokenizer: PreTrainedTokenizerBase,
    generate: Callable[[GenRequest], Awaitable[GenOutput]],
    sampling: SamplingConfig,
    max_turns: int,
    seed: int,
    step_timeout_s: float | None = None,
    budget_grace_fraction: float = 0.0,
) -> Trajectory:
    """Play ``task`` in ``env`` with the policy behind ``generate`` (``VLLMEngine.generate_one``, ``RolloutGroup.generate_one`` or ``Batcher.generate``).

    Token caps: the completion (policy, forced and observation tokens) holds at most
    ``sampling.max_new_tokens`` tokens, plus ``1 + sampling.max_answer_tokens`` when thinking
    with a budget, so a forced ``</think>`` always leaves room for an answer. An episode that
    runs out of tokens (or of engine context) is scored by the environment as it stands and
    marked ``truncated``.

    An environment that raises in ``reset`` or ``step``, or returns an observation the chat
    template cannot render, scores the episode as failed with the error in ``info``; this
    function does not raise for it. Engine failures do raise: they are not the sample's fault.
    ``step_timeout_s`` fails a step that takes longer, so one stuck environment cannot stall a
    whole batch; it can only interrupt a ``step`` that awaits (blocking code inside an ``async
    def`` holds the event loop, and environments must run such work in a thread or process).
    ``budget_grace_fraction``: the grace window after a thinking budget (module docstring); its
    tokens come out of the same completion cap.
    """
    if max_turns < 1:
        raise ValueError(f"max_turns must be at least 1, got {max_turns}")
    chat = ChatTokens.from_tokenizer(tokenizer)
    budget = round_budget(mode.budget) if mode.thinking and mode.budget is not None else None
    if budget is not None and chat.think_close_id is None:
        raise ValueError(
            f"a thinking budget needs {THINK_CLOSE!r} to be one token of the tokenizer; it is not. Start the job from "
            "model.path: align then adds the reasoning tokens and resizes the embeddings (README: Bring your own model)"
        )
    grace = grace_tokens(budget, budget_grace_fraction) if budget is not None else 0
    newline_ids = newline_token_ids(tokenizer) if grace else ()
    try:
        messages = list(env.reset(task))
    except Exception as e:  # noqa: BLE001 - plugin code may raise anything
        return _failed_reset(env, task, mode, tokenizer, budget, seed, e)

    stream = _Stream(render_prompt_ids(tokenizer, messages, mode), generate, sampling, task.id, seed)
    cap = sampling.max_new_tokens + (1 + sampling.max_answer_tokens if budget is not None else 0)
    completion, mask = stream.completion, stream.mask

    history = list(messages)
    assistant_texts: list[str] = []
    thinking_tokens = 0
    forced_close = False
    finish: FinishReason = "stop"
    truncated = False
    result: StepResult | None = None
    stopped_early = False
    num_turns = 0
    for turn in range(max_turns):
        if cap - len(completion) <= 0:  # observations filled the completion
            finish, truncated = "length", True
            break
        num_turns += 1
        turn_start = len(completion)
        if budget is None:
            stop = [] if sampling.ignore_eos else [chat.eos_id]
            finish = (await stream.sample(cap - len(completion), stop)).finish_reason
        else:
            grace_left = grace - max(thinking_tokens - budget, 0)
            limits = _Limits(budget - thinking_tokens, grace_left, newline_ids, cap, sampling.max_answer_tokens)
            finish, forced = await _budgeted_turn(stream, chat, limits)
            forced_close = forced_close or forced
        turn_ids = completion[turn_start:]
        thinking_tokens += count_thinking(turn_ids, mask[turn_start:], chat, mode.thinking)
        text_ids = turn_ids[:-1] if turn_ids and turn_ids[-1] == chat.eos_id else turn_ids
        action = tokenizer.decode(text_ids, skip_special_tokens=True)
        assistant_texts.append(action)

        try:
            result = await asyncio.wait_for(safe_step(env, task, list(history), action), step_timeout_s)
        except TimeoutError:
            result = _failed_step(env, task, f"TimeoutError: step took longer than step_timeout_s={step_timeout_s}")
        history.append({"role": "assistant", "content": action})
        if finish == "length":
            truncated = True
            break
        if result.done:
            break
        if turn == max_turns - 1:
            stopped_early = True
            break
        observation = list(result.observation)
        try:
            obs_ids = observation_ids(tokenizer, history, observation, mode)
        except Exception as e:  # noqa: BLE001 - a malformed observation is the environment's failure
            result = _failed_step(env, task, f"observation could not be rendered: {type(e).__name__}: {e}")
            break
        history.extend(observation)
        for token_id in obs_ids:
            stream.force(token_id)

    assert result is not None  # the first turn always runs: the completion starts empty
    info = dict(result.info)
    if "blame" in info and (span := blame_tokens(tokenizer, text_ids, info["blame"])) is not None:
        info["blame_tokens"] = [turn_start + span[0], turn_start + span[1]]  # of the last turn, where the answer is
    if stopped_early:
        info.setdefault("stopped", f"max_turns={max_turns} reached before the environment was done")
    return Trajectory(
        task=task,
        env=task.env,
        mode=mode,
        prompt_ids=stream.prompt_ids,
        completion_ids=completion,
        loss_mask=mask,
        rollout_logprobs=stream.logprobs,
        messages=history,
        completion="\n".join(assistant_texts),
        reward=float(result.reward),
        correct=result.correct,
        info=info,
        thinking_tokens=thinking_tokens,
        budget=budget,
        forced_close=forced_close,
        finish_reason=finish,
        num_turns=num_turns,
        truncated=truncated,
        seed=seed,
        routed_experts=pad_routes(stream.routes, len(stream.prompt_ids) + len(completion)),
        weight_versions=stream.weight_versions(),
    )


def blame_tokens(tokenizer: PreTrainedTokenizerBase, ids: list[int], span: object) -> tuple[int, int] | None:
    """The tokens ``[i, j)`` of ``ids`` that spell characters ``span = (start, end)`` of their decoded text.

    None for a span that is not two ordered character offsets inside that text: an environment's
    malformed blame loses the step-level credit, never the sample. A prefix's decoded length
    never shrinks as tokens are added, so each end is found by bisection (a few decodes).
    """

    def first(chars: int) -> int:  # the fewest tokens whose decode is longer than ``chars``
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(tokenizer.decode(ids[:mid], skip_special_tokens=True)) > chars:
                hi = mid
            else:
                lo = mid + 1
        return lo

    if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(c, int) for c in span)):
        return None
    start, end = span
    if not ids or not 0 <= start < end <= len(tokenizer.decode(ids, skip_special_tokens=True)):
        return None
    return first(start) - 1, first(end - 1)


def _failed_step(env: Environment, task: Task, error: str) -> StepResult:
    return StepResult(reward=0.0, done=True, correct=False, info={"error": error, "task_id": task.id, "env": env.name})


def _failed_reset(
    env: Environment, task: Task, mode: ReasoningMode, tokenizer: PreTrainedTokenizerBase, budget: int | None, seed: int, e: Exception
) -> Trajectory:
    """A trajectory with no completion (nothing to train on) that carries the reset error."""
    try:
        prompt_ids = render_prompt_ids(tokenizer, list(task.prompt), mode)
    except Exception:  # noqa: BLE001 - the task itself may be what is malformed
        prompt_ids = []
    step = _failed_step(env, task, f"reset failed: {type(e).__name__}: {e}")
    return Trajectory(
        task=task,
        env=task.env,
        mode=mode,
        prompt_ids=prompt_ids,
        completion_ids=[],
        loss_mask=[],
        rollout_logprobs=[],
        messages=list(task.prompt),
        completion="",
        reward=step.reward,
        correct=step.correct,
        info=step.info,
        budget=budget,
        seed=seed,
    )


class _Stream:
    """One episode's token stream: the prompt, then every sampled or forced completion token."""

    def __init__(self, prompt_ids: list[int], generate: Callable[[GenRequest], Awaitable[GenOutput]], sampling: SamplingConfig, task_id: str, seed: int) -> None:
        self.prompt_ids, self._generate, self._sampling, self._task_id, self._seed = prompt_ids, generate, sampling, task_id, seed
        self.completion: list[int] = []
        self.mask: list[int] = []  # 1: sampled by the policy (trained on); 0: forced or an observation
        self.logprobs: list[float] = []
        self.num_calls = 0
        self.routes: Any = None  # the last call's routed experts: it re-read the whole history
        self._versions: list[int | None] = []  # per completion token; None: not known (yet)
        self._unversioned = False  # some engine output carried no versions

    async def sample(self, max_tokens: int, stop_token_ids: list[int]) -> GenOutput:
        """Continue the stream with up to ``max_tokens`` policy tokens (seeded by the call's index)."""
        s = self._sampling
        request = GenRequest(
            prompt_token_ids=self.prompt_ids + self.completion,
            max_tokens=max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            stop_token_ids=stop_token_ids,
            seed=derive_seed(self._seed, self.num_calls),
            request_id=f"{self._task_id}:{self._seed}:{self.num_calls}",
            ignore_eos=s.ignore_eos,
        )
        self.num_calls += 1
        out = await self._generate(request)
        self.routes = out.routed_experts
        self.completion.extend(out.token_ids)
        self.mask.extend([1] * len(out.token_ids))
        self.logprobs.extend(out.logprobs)
        if out.weight_versions is None:
            self._unversioned = True
            self._versions.extend([None] * len(out.token_ids))
        else:
            self._versions.extend(out.weight_versions)
        return out

    def force(self, token_id: int) -> None:
        self.completion.append(token_id)
        self.mask.append(0)
        self.logprobs.append(0.0)
        self._versions.append(self._versions[-1] if self._versions else None)

    def weight_versions(self) -> list[int] | None:
        """One version per completion token (``Trajectory.weight_versions``), or None if the engine gave none."""
        known = [v for v in self._versions if v is not None]
        if self._unversioned or not known:
            return None
        # Tokens forced before the first sampled one take the first version seen.
        return [known[0] if v is None else v for v in self._versions]

    def trim(self, length: int) -> None:
        """Drop the completion's tokens past ``length`` (sampled over a thinking limit)."""
        del self.completion[length:], self.mask[length:], self.logprobs[length:], self._versions[length:]


def grace_tokens(budget: int, fraction: float) -> int:
    """The grace window after ``budget``: ``ceil(fraction * budget)`` tokens.

    >>> grace_tokens(16, 0.1), grace_tokens(64, 0.1), grace_tokens(64, 0.25), grace_tokens(64, 0.0)
    (2, 7, 16, 0)
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"budget_grace_fraction must be in [0, 1], got {fraction}")
    return math.ceil(round(fraction * budget, 9))


@dataclass(frozen=True)
class _Limits:
    """What one budgeted turn may spend: thinking budget and grace window left, and the token caps."""

    budget_left: int  # may be negative: earlier turns spent the budget and some grace
    grace_left: int
    newline_ids: tuple[int, ...]
    cap: int
    max_answer_tokens: int


async def _think(stream: _Stream, chat: ChatTokens, turn_start: int, limit: int, room_cap: int, stops: list[int]) -> Literal["closed", "ended", "open"]:
    """Think on until the turn holds ``limit`` thinking tokens: closed by the model, turn ended, or still thinking.

    Thinking is counted as the SFT budget data counts it (``align.data.truncate_thinking``): the
    tokens between ``<think>`` and ``</think>``. The sample gets a slot for a ``<think>`` not yet
    written and one for a ``</think>`` right after the ``limit``-th thinking token, so a trace of
    exactly ``limit`` tokens closes by itself; thinking tokens sampled past ``limit`` (at most
    two) are dropped again, and the caller forces the close in their place. ``room_cap``: the
    most tokens the completion cap leaves for this sample.
    """
    assert chat.think_close_id is not None
    opened, used = _thinking(stream.completion[turn_start:], chat)
    room = min(limit - used + 1 + (0 if opened else 1), room_cap)
    if room <= 0:
        return "open"
    out = await stream.sample(room, [chat.think_close_id, chat.eos_id, *stops])
    turn = stream.completion[turn_start:]
    opened, used = _thinking(turn, chat)
    if used > limit:
        stream.trim(turn_start + (turn.index(chat.think_open_id) + 1 if opened else 0) + max(limit, 0))
        return "open"
    last = out.token_ids[-1] if out.token_ids else None
    if last == chat.think_close_id:
        return "closed"
    if out.finish_reason == "stop" and last not in stops:
        return "ended"
    return "open"


def _thinking(turn: list[int], chat: ChatTokens) -> tuple[bool, int]:
    """(whether the turn wrote ``<think>``, its thinking tokens so far): the tokens after its
    ``<think>`` (from the turn's start without one) up to a ``</think>`` or the end of the turn."""
    opened = chat.think_open_id in turn
    body = turn[turn.index(chat.think_open_id) + 1 :] if opened else turn
    ends = [i for i, tok in enumerate(body) if tok in (chat.think_close_id, chat.eos_id)]
    return opened, ends[0] if ends else len(body)


async def _budgeted_turn(stream: _Stream, chat: ChatTokens, lim: _Limits) -> tuple[FinishReason, bool]:
    """One assistant turn under a thinking budget: (finish reason, whether ``</think>`` was forced).

    Phase 1 thinks up to ``budget_left`` thinking tokens (fewer if the completion cap needs room
    for a forced close and an answer), stopping at ``</think>`` (:func:`_think`). If the budget
    (not the cap) ran out with the block open, the grace window (if any is left) thinks on up to
    the first newline token. If the model did not close the block, a ``</think>`` is forced and
    phase 2 answers in at most ``max_answer_tokens``; if it did, the answer may use all the room
    left. A turn that ends inside the think block has no phase 2.
    """
    assert chat.think_close_id is not None
    start = len(stream.completion)

    def room_cap() -> int:
        return lim.cap - len(stream.completion) - 1 - lim.max_answer_tokens

    state = await _think(stream, chat, start, lim.budget_left, room_cap(), [])
    if state == "open" and lim.grace_left > 0 and _thinking(stream.completion[start:], chat)[1] >= lim.budget_left:
        state = await _think(stream, chat, start, lim.budget_left + lim.grace_left, room_cap(), list(lim.newline_ids))
    needs_close, needs_answer = state == "open", state != "ended"
    finish: FinishReason = "stop"
    if needs_close:
        stream.force(chat.think_close_id)
    if needs_answer:
        room = lim.cap - len(stream.completion)
        answer_room = min(lim.max_answer_tokens, room) if needs_close else room
        finish = (await stream.sample(answer_room, [chat.eos_id])).finish_reason if answer_room > 0 else "length"
    return finish, needs_close
