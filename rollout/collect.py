"""Collect groups of trajectories: G episodes per task, all running concurrently.

Each episode sends its requests on its own through a ``RequestFn`` (the engine batches
whatever runs at each decoding step), or, given a batch ``GenerateFn``, through one shared
:class:`Batcher` that joins the episodes' waiting requests into one call per round of turns. Each episode's seed comes from the base seed, the task id
and the episode's index in its group, so a run is reproducible and the G samples of a group
differ. Different runs (or steps) should pass different base seeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from align.config.schema import SamplingConfig
from align.reasoning import ReasoningMode
from envs.base import Environment, Task
from rollout.batcher import Batcher
from rollout.episode import derive_seed, run_episode
from rollout.types import GenerateFn, RequestFn, Trajectory

if TYPE_CHECKING:  # only annotated: the rollout engines' actors and the driver's early spawn skip transformers' import
    from transformers import PreTrainedTokenizerBase


async def collect(
    env_by_name: Mapping[str, Environment],
    tasks_with_modes: Sequence[tuple[Task, ReasoningMode]],
    generations_per_prompt: int,
    *,
    tokenizer: PreTrainedTokenizerBase,
    generate: GenerateFn | Batcher | None = None,
    generate_one: RequestFn | None = None,
    sampling: SamplingConfig,
    max_turns: int,
    seed: int,
    step_timeout_s: float | None = None,
    budget_grace_fraction: float = 0.0,
    greedy: bool = False,
) -> list[list[Trajectory]]:
    """One group of ``generations_per_prompt`` trajectories per ``(task, mode)``, in input order.

    Exactly one of ``generate_one`` (a per-request ``RequestFn``: each episode goes on as soon
    as its own request returns) and ``generate`` (a batch ``GenerateFn``, wrapped in a new
    Batcher here, or a Batcher to share with other concurrent collections) is given. Each task is routed to ``env_by_name[task.env]``.
    A task listed twice gets different seeds for its second group. An environment failure
    fails only its own samples (``step_timeout_s`` bounds each environment step); an engine
    failure cancels the other episodes and raises. ``budget_grace_fraction``: see
    :func:`rollout.episode.run_episode`. ``greedy``: each group ends with one more episode, played
    at temperature 0 (grpo.baseline=greedy), so it holds ``generations_per_prompt + 1``.
    """
    if generations_per_prompt < 1:
        raise ValueError(f"generations_per_prompt must be at least 1, got {generations_per_prompt}")
    unknown = sorted({task.env for task, _ in tasks_with_modes if task.env not in env_by_name})
    if unknown:
        raise KeyError(f"no environment for tasks of env {unknown}; environments given: {sorted(env_by_name)}")
    if (generate is None) == (generate_one is None):
        raise ValueError("give collect() exactly one of generate (batch) and generate_one (per request)")
    if generate_one is None:
        assert generate is not None
        generate_one = (generate if isinstance(generate, Batcher) else Batcher(generate)).generate

    greedy_sampling = sampling.model_copy(update={"temperature": 0.0})
    occurrences: dict[str, int] = {}
    episodes: list[asyncio.Task[Trajectory]] = []
    for task, mode in tasks_with_modes:
        occurrence = occurrences.get(task.id, 0)
        occurrences[task.id] = occurrence + 1
        for index in range(generations_per_prompt + greedy):
            episode_seed = derive_seed(seed, task.id, occurrence, index)
            env = env_by_name[task.env]
            how = greedy_sampling if index == generations_per_prompt else sampling
            coro = run_episode(env, task, mode, tokenizer, generate_one, how, max_turns, episode_seed, step_timeout_s, budget_grace_fraction)
            episodes.append(asyncio.ensure_future(coro))
    try:
        trajectories = await asyncio.gather(*episodes)
    except BaseException:
        for episode in episodes:
            episode.cancel()
        raise
    g = generations_per_prompt + greedy
    groups = [list(trajectories[i : i + g]) for i in range(0, len(trajectories), g)]
    for group in groups if greedy else ():
        group[-1].info["greedy"] = True
    return groups
