"""Held-out tasks: the one selector behind every evaluation (``align eval``, the pipeline report,
the RL driver's periodic eval and DPO's task accuracy).

Every environment's generator is read from one evaluation seed stream (``EVAL_SEED_OFFSET +
seed``); candidates whose opening messages (``env.reset(task)``, the one dedup key, shared with
:mod:`align.data.generated`) appear in ``exclude`` are skipped. :func:`training_prompts` builds
``exclude`` from the stages' recipes by regenerating what they train on from the same seeds.

Limits: a stage that reads its data from a file (``data.path``, ``envs[].data_path``) is not
regenerated here, so its prompts are not excluded; a generator with fewer than ``counts[name]``
fresh tasks among ``CANDIDATE_FACTOR x`` that many candidates yields fewer tasks.
"""

from __future__ import annotations

from collections.abc import Iterable

from align.config import LoadedRecipe
from align.data.generated import env_seed, prompt_key, report_overlap, split_counts
from envs.base import Environment, Task, task_source

EVAL_SEED_OFFSET = 1_000_003
CANDIDATE_FACTOR = 4


def task_key(env: Environment, task: Task) -> str:
    """What makes two tasks the same prompt: the messages the policy opens with."""
    return prompt_key(env.reset(task))


def heldout_tasks(envs: dict[str, Environment], counts: dict[str, int], exclude: set[str], seed: int) -> list[Task]:
    """``counts[name]`` tasks per environment from the evaluation stream, none of whose keys is in ``exclude``.

    An environment left with fewer than ``counts[name]`` is printed (:func:`report_overlap`).
    """
    tasks: list[Task] = []
    kept: dict[str, int] = {}
    for name, n in counts.items():
        env = envs[name]
        fresh = [t for t in task_source(env).generate(n * CANDIDATE_FACTOR, EVAL_SEED_OFFSET + seed) if task_key(env, t) not in exclude]
        tasks.extend(fresh[:n])
        kept[name] = len(fresh[:n])
    report_overlap("eval tasks", counts, kept)
    return tasks


def training_prompts(envs: dict[str, Environment], stages: Iterable[LoadedRecipe]) -> set[str]:
    """Keys of every generated prompt any of ``stages`` trains on (SFT/RM/DPO data, RL task streams)."""
    keys: set[str] = set()
    for loaded in stages:
        r = loaded.recipe
        data = getattr(r, "data", None)
        gen = getattr(data, "generated", None)
        if gen is not None and data.path is None:
            for name, n in split_counts(gen.envs, gen.num_train).items():
                if name in envs:
                    keys.update(task_key(envs[name], t) for t in task_source(envs[name]).generate(n, env_seed(gen.seed, name)))
        for spec in getattr(r, "envs", ()):
            if spec.name in envs and spec.data_path is None:
                keys.update(task_key(envs[spec.name], t) for t in task_source(envs[spec.name]).generate(spec.num_train, r.seed))
    return keys
