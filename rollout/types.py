"""What moves through the rollout layer: generation requests and outputs, and trajectories.

Plain dataclasses of Python lists and numbers, so they pickle cheaply across Ray and read
well in a debugger. Token ids are the source of truth; text fields are for rewards, logs
and humans.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from align.reasoning import ReasoningMode
from envs.base import Message, Task
from rewards.base import RewardInput

FinishReason = Literal["stop", "length"]


@dataclass
class GenRequest:
    """One generation call for one sequence: continue ``prompt_token_ids`` by up to ``max_tokens``.

    ``top_k <= 0`` disables top-k. ``temperature == 0`` is greedy. ``seed`` seeds this
    request's own sampler, so its output does not depend on what else is in the batch (up to
    floating-point differences between batch shapes). Generation stops after any of
    ``stop_token_ids`` (the stop token is kept in the output) or the model's end-of-sequence
    token. ``request_id`` is for tracing and for code that shards a batch and reassembles it.
    """

    prompt_token_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None
    request_id: str = ""
    ignore_eos: bool = False  # generate to max_tokens past end-of-sequence (benchmarks only)


@dataclass
class GenOutput:
    """The sampled continuation of one :class:`GenRequest`.

    ``logprobs[i]`` is the log-probability of ``token_ids[i]`` under the distribution it was
    sampled from: ``log_softmax(logits / temperature)`` (after top-k/top-p masking, when used;
    with ``temperature == 0``, greedy, it is ``log_softmax(logits)``).
    ``finish_reason`` is ``"stop"`` when a stop or end-of-sequence token ended it (that token is
    the last of ``token_ids``), ``"length"`` when ``max_tokens`` or the engine's context ran out.
    ``routed_experts`` (engines that record them, ``rollout.return_routed_experts``): the experts
    each MoE layer routed each token of prompt + output to, ``[tokens, moe_layers, top_k]``,
    ``-1`` where the engine routed nothing (the last output token is never fed back).
    ``weight_versions[i]`` is the engine's weights version (:meth:`rollout.engine.VLLMEngine.weights_version`)
    when ``token_ids[i]`` was sampled: a request that runs across an in-flight weight update has
    the old version on its first tokens and the new one after. ``None`` when the engine gives none.
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    request_id: str = ""
    routed_experts: np.ndarray | None = None
    weight_versions: list[int] | None = None


# Batch generation as the episode runner sees it: in-process, ``asyncio.to_thread`` around
# ``VLLMEngine.generate``; over Ray, a function that shards the batch across engine actors.
# It must return one output per request, in order.
GenerateFn = Callable[[list[GenRequest]], Awaitable[list[GenOutput]]]


@dataclass
class Trajectory:
    """One episode: the token stream the learner trains on, plus what rewards and logs need.

    ``completion_ids`` is everything after ``prompt_ids``: policy tokens, forced tokens (a
    ``</think>`` closed by the budget) and environment observation tokens (tool turns, with the
    chat template's markup around them). ``loss_mask`` is 1 only on policy-sampled tokens, and
    ``rollout_logprobs`` holds the sampler's log-probabilities there (0.0 where the mask is 0);
    all three have the same length.

    ``reward``, ``correct`` and ``info`` come from the environment's last step (``info["error"]``
    holds a crash's message; the episode then scores as failed). ``thinking_tokens`` counts
    policy tokens inside think blocks over all turns; ``budget`` is the ladder step the system
    turn asked for (the whole episode shares it). ``forced_close`` says a ``</think>`` had to be
    forced. ``finish_reason`` is the last assistant turn's; ``truncated`` says the episode
    stopped because tokens ran out (the completion cap or the engine's context), not because
    the model or the environment ended it.

    ``routed_experts`` (with ``rollout.return_routed_experts``): ``[len(prompt_ids) +
    len(completion_ids), moe_layers, top_k]`` int16, the experts the engine routed each token to
    in the episode's last generation call (which re-reads the whole history), MoE layers in
    pattern order, ``-1`` for tokens it did not route (tokens appended after that call). The
    learner's routing replay reads it.

    ``weight_versions`` (same length as ``completion_ids``): the engine's weights version when
    each token was produced; forced and observation tokens get the version of the last token
    sampled before them (the episode's first version if none was). ``None`` when the engine
    reported no versions. An episode that ran across an in-flight weight update spans two (or
    more) versions.
    """

    task: Task
    env: str
    mode: ReasoningMode
    prompt_ids: list[int]
    completion_ids: list[int]
    loss_mask: list[int]
    rollout_logprobs: list[float]
    messages: list[Message]
    completion: str
    reward: float
    correct: bool | None
    info: dict[str, Any]
    thinking_tokens: int = 0
    budget: int | None = None
    forced_close: bool = False
    finish_reason: FinishReason = "stop"
    num_turns: int = 0
    truncated: bool = False
    seed: int | None = None
    routed_experts: np.ndarray | None = None
    weight_versions: list[int] | None = None

    @property
    def error(self) -> str | None:
        return self.info.get("error")

    @property
    def num_policy_tokens(self) -> int:
        return sum(self.loss_mask)

    def to_reward_input(self, max_new_tokens: int) -> RewardInput:
        """What reward functions see of this trajectory (``completion_tokens`` counts policy tokens)."""
        return RewardInput(
            task=self.task,
            messages=self.messages,
            completion=self.completion,
            mode=self.mode,
            thinking_tokens=self.thinking_tokens,
            forced_close=self.forced_close,
            completion_tokens=self.num_policy_tokens,
            max_new_tokens=max_new_tokens,
            truncated=self.truncated,
            env_reward=self.reward,
            correct=self.correct,
            extra={"info": self.info, "num_turns": self.num_turns, "budget": self.budget},
        )
