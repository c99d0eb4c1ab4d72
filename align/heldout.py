"""Held-out tasks: the one selector behind every evaluation (``align eval``, the pipeline report,
the RL driver's periodic eval and DPO's task accuracy).

Every environment's generator is read from one evaluation seed stream (``EVAL_SEED_OFFSET +
seed``); candidates whose opening messages (``env.reset(task)``, the one dedup key, shared with
:mod:`align.data.generated`) appear in ``exclude`` or among the tasks already taken are skipped,
so no prompt is scored twice (the tiny world's code and instruction generators repeat prompts
often). :func:`training_prompts` builds
``exclude`` from the stages' recipes by regenerating what they train on from the same seeds.

Grades: the easy grades of a generator have few distinct prompts, most of them trained on, so the
first fresh candidates are mostly hard ones (instruction_following's 200 were 61% grade 3 of 3).
:func:`take_by_grade` keeps the generator's own grade mix instead (``meta["grade"]``; tasks
without one form a single stratum, which is plain first-come selection).

Limits: a stage that reads its data from a file (``data.path``, ``envs[].data_path``) is not
regenerated here, so its prompts are not excluded; a generator with fewer than ``counts[name]``
distinct fresh tasks among ``CANDIDATE_FACTOR x`` that many candidates yields fewer tasks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from align.config import LoadedRecipe
from align.data.generated import env_seed, generated_envs, prompt_key, report_overlap, split_counts
from envs.base import Environment, Task, task_source
from envs.registry import make_env

EVAL_SEED_OFFSET = 1_000_003
# Candidates drawn per task asked for. The tiny world's code generator needs about 16x for 200
# distinct held-out prompts besides the demo's training ones (instruction_following has fewer than
# 200 at any factor); drawing costs milliseconds per thousand tasks.
CANDIDATE_FACTOR = 16


def task_key(env: Environment, task: Task) -> str:
    """What makes two tasks the same prompt: the messages the policy opens with."""
    return prompt_key(env.reset(task))


def _grade(task: Task) -> str:
    return str(task.meta.get("grade"))


def take_by_grade(drawn: Sequence[Task], fresh: Sequence[Task], n: int) -> list[Task]:
    """``n`` of ``fresh`` (kept in their order) whose grades follow the grade mix of ``drawn``.

    ``drawn`` is every candidate the generator made, trained-on ones included, so its grade shares
    are the generator's own. Each grade's quota (largest-remainder split of ``n``) takes that
    grade's first fresh tasks; a quota a grade cannot fill goes to the first fresh tasks left
    over, whatever their grade.
    """
    shares = Counter(_grade(t) for t in drawn)
    left = split_counts(dict(shares), n) if shares else {}
    chosen: set[int] = set()
    for i, t in enumerate(fresh):
        if left.get(_grade(t), 0) > 0:
            left[_grade(t)] -= 1
            chosen.add(i)
    spare = [i for i in range(len(fresh)) if i not in chosen]
    chosen.update(spare[: max(0, n - len(chosen))])
    return [t for i, t in enumerate(fresh) if i in chosen]


def heldout_tasks(envs: dict[str, Environment], counts: dict[str, int], exclude: set[str], seed: int) -> list[Task]:
    """``counts[name]`` tasks per environment from the evaluation stream, none of whose keys is in
    ``exclude``, in the generator's grade mix (:func:`take_by_grade`).

    An environment left with fewer than ``counts[name]`` is printed (:func:`report_overlap`).
    """
    tasks: list[Task] = []
    kept: dict[str, int] = {}
    for name, n in counts.items():
        env = envs[name]
        seen = set(exclude)
        drawn = task_source(env).generate(n * CANDIDATE_FACTOR, EVAL_SEED_OFFSET + seed)
        fresh: list[Task] = []
        for t in drawn:
            key = task_key(env, t)
            if key not in seen:
                seen.add(key)
                fresh.append(t)
        fresh = take_by_grade(drawn, fresh, n)
        tasks.extend(fresh)
        kept[name] = len(fresh)
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
                    source = generated_envs(gen, [name])[name]
                    keys.update(task_key(envs[name], t) for t in source.generate(n, env_seed(gen.seed, name)))
        for spec in getattr(r, "envs", ()):
            if spec.name in envs and spec.data_path is None:
                # The stage's own environment, as its driver builds it: its params (grade_weights,
                # templates) decide what the generator draws, whatever params ``envs`` were built with.
                source = make_env(spec.name, spec.params)
                keys.update(task_key(envs[spec.name], t) for t in task_source(source).generate(spec.num_train, r.seed))
    return keys
