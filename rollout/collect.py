"""Collect groups of trajectories: G episodes per task, all running concurrently.

All episodes share one :class:`Batcher`, so the engine sees one batch per round of turns
instead of one request per episode. Each episode's seed comes from the base seed, the task id
and the episode's index in its group, so a run is reproducible and the G samples of a group
differ. Different runs (or steps) should pass different base seeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from transformers import PreTrainedTokenizerBase

from align.config.schema import SamplingConfig
from align.reasoning import ReasoningMode
from envs.base import Environment, Task
from rollout.batcher import Batcher
from rollout.episode import derive_seed, run_episode
from rollout.types import GenerateFn, Trajectory


async def collect(
    env_by_name: Mapping[str, Environment],
    tasks_with_modes: Sequence[tuple[Task, ReasoningMode]],
    generations_per_prompt: int,
    *,
    tokenizer: PreTrainedTokenizerBase,
    generate: GenerateFn | Batcher,
    sampling: SamplingConfig,
    max_turns: int,
    seed: int,
    step_timeout_s: float | None = None,
    budget_grace_fraction: float = 0.0,
) -> list[list[Trajectory]]:
    """One group of ``generations_per_prompt`` trajectories per ``(task, mode)``, in input order.

    ``generate`` is a batch ``GenerateFn`` (wrapped in a new Batcher here) or a Batcher to
    share with other concurrent collections. Each task is routed to ``env_by_name[task.env]``.
    A task listed twice gets different seeds for its second group. An environment failure
    fails only its own samples (``step_timeout_s`` bounds each environment step); an engine
    failure cancels the other episodes and raises. ``budget_grace_fraction``: see
    :func:`rollout.episode.run_episode`.
    """
    if generations_per_prompt < 1:
        raise ValueError(f"generations_per_prompt must be at least 1, got {generations_per_prompt}")
    unknown = sorted({task.env for task, _ in tasks_with_modes if task.env not in env_by_name})
    if unknown:
        raise KeyError(f"no environment for tasks of env {unknown}; environments given: {sorted(env_by_name)}")
    batcher = generate if isinstance(generate, Batcher) else Batcher(generate)

    occurrences: dict[str, int] = {}
    episodes: list[asyncio.Task[Trajectory]] = []
    for task, mode in tasks_with_modes:
        occurrence = occurrences.get(task.id, 0)
        occurrences[task.id] = occurrence + 1
        for index in range(generations_per_prompt):
            episode_seed = derive_seed(seed, task.id, occurrence, index)
            env = env_by_name[task.env]
            coro = run_episode(env, task, mode, tokenizer, batcher.generate, sampling, max_turns, episode_seed, step_timeout_s, budget_grace_fraction)
            episodes.append(asyncio.ensure_future(coro))
    try:
        trajectories = await asyncio.gather(*episodes)
    except BaseException:
        for episode in episodes:
            episode.cancel()
        raise
    g = generations_per_prompt
    return [list(trajectories[i : i + g]) for i in range(0, len(trajectories), g)]
