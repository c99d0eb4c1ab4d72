"""Episodes: one task played against the policy, turn by turn, as a stream of token ids.

Many episodes run as asyncio tasks; each awaits one generation at a time, and a
:class:`Batcher` turns the requests that are waiting into one engine call. Environments are
awaited concurrently too (``envs.base.safe_step``), so a slow verifier does not hold up the
other episodes' generations.

Token ids are kept end to end: the prompt is rendered once with the chat template, policy
tokens are appended as sampled, and each environment observation is appended as the tokens
the chat template gives it. Earlier turns are never decoded and re-tokenized, so the learner
scores exactly the tokens the sampler produced.

Reasoning control (see ``align/reasoning.py``): with thinking on and a budget, a turn first
generates at most the budget left, stopping at ``</think>``; if the budget runs out, a
``</think>`` is forced (loss mask 0) and the answer is generated in a second phase of at most
``sampling.max_answer_tokens``. The budget covers the whole episode: every turn's thinking
counts against it, so ``thinking_tokens <= budget`` always holds.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from align.config.schema import SamplingConfig
from align.reasoning import THINK_CLOSE, THINK_OPEN, ReasoningMode, round_budget
from envs.base import Environment, Message, StepResult, Task, safe_step
from rollout.routing import pad_routes
from rollout.types import FinishReason, GenerateFn, GenOutput, GenRequest, Trajectory


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from ``parts`` (same parts, same seed, on every machine and run)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class Batcher:
    """Collects the generation requests of concurrent episodes into batched engine calls.

    Requests queued in the same event-loop tick go out in one call. At most one call is in
    flight (an in-process ``vllm.LLM`` is not thread-safe, and a Ray generate function shards
    each call across engines itself); requests that arrive meanwhile wait and go out together
    as soon as it returns, joined by those of episodes that resume on its results.

    A failed call fails every request in it, and every request after it: an engine that
    raised is not trusted again (rebuild it and make a new Batcher).
    """

    def __init__(self, generate_fn: GenerateFn) -> None:
        self._generate_fn = generate_fn
        self._pending: list[tuple[GenRequest, asyncio.Future[GenOutput]]] = []
        self._scheduled = False
        self._in_flight: asyncio.Task[None] | None = None
        self.num_calls = 0
        self.num_requests = 0
        self.largest_batch = 0
        self.error: BaseException | None = None

    async def generate(self, request: GenRequest) -> GenOutput:
        if self.error is not None:
            raise RuntimeError(f"an earlier engine call failed: {self.error!r}") from self.error
        future: asyncio.Future[GenOutput] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if not self._scheduled and self._in_flight is None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_call)

    def _start_call(self) -> None:
        self._scheduled = False
        if self._in_flight is not None:  # it reschedules when it returns
            return
        batch = [(req, fut) for req, fut in self._pending if not fut.done()]  # drop cancelled episodes
        self._pending = []
        if not batch:
            return
        self.num_calls += 1
        self.num_requests += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        self._in_flight = asyncio.get_running_loop().create_task(self._call(batch))

    async def _call(self, batch: list[tuple[GenRequest, asyncio.Future[GenOutput]]]) -> None:
        try:
            outputs = await self._generate_fn([req for req, _ in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"the generate function returned {len(outputs)} outputs for {len(batch)} requests")
            for (_, future), output in zip(batch, outputs):
                if not future.done():
                    future.set_result(output)
        except BaseException as e:  # noqa: BLE001 - handed to every waiting episode
            self.error = e
            waiting, self._pending = batch + self._pending, []
            for _, future in waiting:
                if not future.done():
                    future.set_exception(e)
            if not isinstance(e, Exception):
                raise
        finally:
            self._in_flight = None
            if self._pending:
                self._schedule()


def engine_generate_fn(engine: Any) -> GenerateFn:
    """The in-process ``GenerateFn``: ``engine.generate`` in a worker thread, so the loop stays live."""

    async def generate(requests: list[GenRequest]) -> list[GenOutput]:
        return await asyncio.to_thread(engine.generate, requests)

    return generate


# ---------------------------------------------------------------- chat rendering


@dataclass(frozen=True)
class ChatTokens:
    """The token ids the episode runner acts on, read from the tokenizer."""

    eos_id: int
    think_open_id: int | None
    think_close_id: int | None

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> "ChatTokens":
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token: set it to the token that ends an assistant turn (ChatML: <|im_end|>)")
        return cls(tokenizer.eos_token_id, _single_token(tokenizer, THINK_OPEN), _single_token(tokenizer, THINK_CLOSE))


def _single_token(tokenizer: PreTrainedTokenizerBase, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def template_kwargs(mode: ReasoningMode) -> dict[str, Any]:
    """Chat-template variables for ``mode`` (the budget rounded up to the ladder)."""
    budget = round_budget(mode.budget) if mode.thinking and mode.budget is not None else None
    return {"enable_thinking": mode.thinking, "thinking_budget": budget}


def render_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message], mode: ReasoningMode) -> list[int]:
    """The prompt's token ids: system turn with the toggle/budget, messages, generation prompt."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs(mode))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def observation_ids(
    tokenizer: PreTrainedTokenizerBase, history: list[Message], observation: list[Message], mode: ReasoningMode
) -> list[int]:
    """Tokens to append after an assistant turn that ended with the eos token: the observation
    messages and the next generation prompt, exactly as the chat template renders them.

    It is the template's text for ``history + observation`` (with a generation prompt) minus its
    text for ``history``, preceded by whatever the template writes after the assistant's
    end-of-turn token (ChatML: a newline), which the policy did not sample. Requires a template
    that renders earlier turns the same whatever follows them (ours does; templates that drop
    earlier turns' thinking may not, and get a clear error).
    """
    kwargs = template_kwargs(mode)
    base = tokenizer.apply_chat_template(history, tokenize=False, **kwargs)
    full = tokenizer.apply_chat_template(history + observation, tokenize=False, add_generation_prompt=True, **kwargs)
    if not full.startswith(base):
        raise ValueError(
            "the chat template renders the conversation differently once an observation follows it, so observation "
            "tokens cannot be appended to the token stream; use a template that keeps earlier turns unchanged"
        )
    end_of_turn = tokenizer.eos_token
    cut = base.rfind(end_of_turn)
    glue = base[cut + len(end_of_turn) :] if cut >= 0 else ""
    return list(tokenizer(glue + full[len(base) :], add_special_tokens=False)["input_ids"])


def count_thinking(turn_ids: list[int], turn_mask: list[int], chat: ChatTokens, thinking: bool) -> int:
    """Policy tokens inside the think block of one assistant turn.

    Thinking on: the block runs from the turn's start (after a ``<think>`` if the model wrote
    one) to the first ``</think>``; with no ``</think>``, from a ``<think>`` to the end of the
    turn, or nothing if there is no ``<think>`` either. Thinking off: the prompt already closed
    the block, so only a ``<think>`` the model opened anyway counts, up to its ``</think>``.
    Forced tokens (mask 0) never count.
    """
    if chat.think_close_id is None:
        return 0
    n = len(turn_ids) - 1 if turn_ids and turn_ids[-1] == chat.eos_id else len(turn_ids)
    ids = turn_ids[:n]
    open_at = ids.index(chat.think_open_id) if chat.think_open_id in ids else None
    if thinking:
        close_at = ids.index(chat.think_close_id) if chat.think_close_id in ids else None
        if close_at is not None:
            start = open_at + 1 if open_at is not None and open_at < close_at else 0
            end = close_at
        elif open_at is not None:
            start, end = open_at + 1, n
        else:
            return 0
    else:
        if open_at is None:
            return 0
        start = open_at + 1
        end = next((i for i in range(start, n) if ids[i] == chat.think_close_id), n)
    return sum(turn_mask[start:end])


# ---------------------------------------------------------------- the episode


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
) -> Trajectory:
    """Play ``task`` in ``env`` with the policy behind ``generate`` (usually ``Batcher.generate``).

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
    """
    if max_turns < 1:
        raise ValueError(f"max_turns must be at least 1, got {max_turns}")
    chat = ChatTokens.from_tokenizer(tokenizer)
    budget = round_budget(mode.budget) if mode.thinking and mode.budget is not None else None
    if budget is not None and chat.think_close_id is None:
        raise ValueError(f"a thinking budget needs {THINK_CLOSE!r} to be one token of the tokenizer; it is not")
    try:
        messages = list(env.reset(task))
    except Exception as e:  # noqa: BLE001 - plugin code may raise anything
        return _failed_reset(env, task, mode, tokenizer, budget, seed, e)

    prompt_ids = render_prompt_ids(tokenizer, messages, mode)
    cap = sampling.max_new_tokens + (1 + sampling.max_answer_tokens if budget is not None else 0)
    completion: list[int] = []
    mask: list[int] = []
    logprobs: list[float] = []
    num_calls = 0
    routes = None  # the last call's routed experts: it re-read the whole history

    async def sample(max_tokens: int, stop_token_ids: list[int]) -> GenOutput:
        nonlocal num_calls, routes
        request = GenRequest(
            prompt_token_ids=prompt_ids + completion,
            max_tokens=max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            stop_token_ids=stop_token_ids,
            seed=derive_seed(seed, num_calls),
            request_id=f"{task.id}:{seed}:{num_calls}",
        )
        num_calls += 1
        out = await generate(request)
        routes = out.routed_experts
        completion.extend(out.token_ids)
        mask.extend([1] * len(out.token_ids))
        logprobs.extend(out.logprobs)
        return out

    def force(token_id: int) -> None:
        completion.append(token_id)
        mask.append(0)
        logprobs.append(0.0)

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
            finish = (await sample(cap - len(completion), [chat.eos_id])).finish_reason
        else:
            assert chat.think_close_id is not None
            think_room = min(budget - thinking_tokens, cap - len(completion) - 1 - sampling.max_answer_tokens)
            needs_close, needs_answer = True, True
            if think_room > 0:
                out = await sample(think_room, [chat.think_close_id, chat.eos_id])
                if out.token_ids and out.token_ids[-1] == chat.think_close_id:
                    needs_close = False  # closed by the model: the answer may use all the room left
                elif out.finish_reason == "stop":
                    needs_close = needs_answer = False  # the turn ended inside phase 1
                    finish = "stop"
            if needs_close:
                force(chat.think_close_id)
                forced_close = True
            if needs_answer:
                room = cap - len(completion)
                answer_room = min(sampling.max_answer_tokens, room) if needs_close else room
                finish = (await sample(answer_room, [chat.eos_id])).finish_reason if answer_room > 0 else "length"
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
            force(token_id)

    assert result is not None  # the first turn always runs: the completion starts empty
    info = dict(result.info)
    if stopped_early:
        info.setdefault("stopped", f"max_turns={max_turns} reached before the environment was done")
    return Trajectory(
        task=task,
        env=task.env,
        mode=mode,
        prompt_ids=prompt_ids,
        completion_ids=completion,
        loss_mask=mask,
        rollout_logprobs=logprobs,
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
        routed_experts=pad_routes(routes, len(prompt_ids) + len(completion)),
    )


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
