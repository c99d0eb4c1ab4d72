"""A curriculum by pass rate (``grpo.curriculum``): which training tasks RL samples, from group results.

Measured on the fly: every scored group is G attempts of one task by the current policy, so its
share of correct trajectories is that task's pass rate now. The curriculum keeps, per task, the
pass rate of its last group and how many all-correct groups it had in a row. It then:

- drops solved tasks: a task whose last ``solved_streak`` groups were all correct leaves the
  sampling pool (``solved_weight = 0``) or stays with its weight scaled by ``solved_weight``
  (so a task solved by luck, or forgotten later, can come back). A dropped task is never sampled
  again, so it is never re-measured: the drop is for good, as in Nemotron 3 Nano's recipe;
- weights the others: ``uniform``; ``learnability``, ``p(1-p) + min_weight`` (most weight on
  tasks solved about half the time, where a group's rewards differ most); or ``easy_first``,
  ``p + min_weight`` (tasks the policy almost solves first; as they are solved and dropped the
  mass moves to harder ones). A task not sampled yet counts as ``p = unseen_pass_rate``, or, with
  ``unseen_prior_key`` (e.g. ``grade``), as the pass rate its kind has shown so far: the mean last
  pass rate of the seen tasks of its environment with the same ``meta[key]``, plus one pseudo-task at
  ``unseen_pass_rate`` (so one bad group does not shut a grade out). A run draws each task about
  once when the pool is much larger than its steps' draws (the demo: 35 steps draw ~220 of 2,000
  math tasks), so without a prior the weights never reach the tasks it draws;
- reports per environment the histogram of the last pass rates of the tasks seen so far, and
  how many tasks are seen, solved and still in the pool.

Each environment keeps its own pool and its share of every step (``envs[].weight``): the
curriculum only chooses which of its tasks. When every task of an environment is solved, its
quota is sampled uniformly from all its tasks (the pool is empty; ``<env>/tasks_active`` shows 0).
Draws are weighted sampling without replacement (Efraimidis-Spirakis keys) from a random generator
seeded by the seed, the environment and its count of tasks drawn, so a run resumed from a checkpoint (which
holds :meth:`Curriculum.state_dict`) draws exactly what the uninterrupted run would.
Groups with no verdict at all (every ``correct`` is None) are not recorded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from align.config.schema import CurriculumConfig
from envs.base import Task
from rollout.types import Trajectory


class Curriculum:
    """Per-task pass rates (state: ``{env: {task id: [last pass rate, all-correct streak]}}``) and draws."""

    def __init__(self, cfg: CurriculumConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        self.stats: dict[str, dict[str, list[float]]] = {}

    def observe(self, groups: Sequence[Sequence[Trajectory]]) -> None:
        """Record each group's pass rate for its task (a group is G trajectories of one task)."""
        for group in groups:
            verdicts = [t.correct for t in group]
            if not group or all(v is None for v in verdicts):
                continue
            task = group[0].task
            rate = sum(1 for v in verdicts if v) / len(verdicts)
            _, streak = self.stats.setdefault(task.env, {}).get(task.id, [0.0, 0])
            self.stats[task.env][task.id] = [rate, streak + 1 if rate == 1.0 else 0]

    def solved(self, env: str, task_id: str) -> bool:
        entry = self.stats.get(env, {}).get(task_id)
        return entry is not None and entry[1] >= self.cfg.solved_streak

    def weight(self, env: str, task_id: str, unseen: float | None = None) -> float:
        """The task's sampling weight (0: out of the pool); ``unseen``: its p if not sampled yet."""
        c = self.cfg
        entry = self.stats.get(env, {}).get(task_id)
        p = entry[0] if entry is not None else (c.unseen_pass_rate if unseen is None else unseen)
        if c.weighting == "learnability":
            w = p * (1 - p) + c.min_weight
        elif c.weighting == "easy_first":
            w = p + c.min_weight
        else:
            w = 1.0
        return w * c.solved_weight if self.solved(env, task_id) else w

    def priors(self, env: str, tasks: Sequence[Task]) -> dict[Any, float]:
        """``meta[unseen_prior_key]`` value -> the p of an unseen task with it ({} without the key)."""
        key = self.cfg.unseen_prior_key
        if key is None:
            return {}
        seen = self.stats.get(env, {})
        sums: dict[Any, list[float]] = {}
        for t in tasks:
            acc = sums.setdefault(t.meta.get(key), [self.cfg.unseen_pass_rate, 1.0])
            if t.id in seen:
                acc[0] += seen[t.id][0]
                acc[1] += 1
        return {value: total / n for value, (total, n) in sums.items()}

    def _weights(self, env: str, tasks: Sequence[Task], priors: dict[Any, float] | None = None) -> list[float]:
        """Each task's :meth:`weight`; ``priors``: :meth:`priors` of ``tasks`` when the caller has them."""
        priors = self.priors(env, tasks) if priors is None else priors
        key = self.cfg.unseen_prior_key
        return [self.weight(env, t.id, priors.get(t.meta.get(key)) if key else None) for t in tasks]

    def draw(self, env: str, tasks: Sequence[Task], n: int, position: int) -> list[Task]:
        """``n`` tasks of ``env`` (distinct while the pool has ``n``); ``position``: tasks it drew before."""
        rng = random.Random(f"curriculum:{self.seed}:{env}:{position}")
        weights = self._weights(env, tasks)
        if not any(weights):
            weights = [1.0] * len(tasks)  # everything solved: nothing to prefer
        keys = [rng.random() ** (1.0 / w) if w > 0 else -1.0 for w in weights]
        pool = sorted((i for i, w in enumerate(weights) if w > 0), key=lambda i: keys[i], reverse=True)
        return [tasks[pool[k % len(pool)]] for k in range(n)]

    def metrics(self, tasks: dict[str, list[Task]]) -> dict[str, float]:
        """Per environment: tasks seen, solved and in the pool, and the share of seen tasks per pass-rate bin."""
        out: dict[str, float] = {}
        bins = self.cfg.histogram_bins
        for env, ts in tasks.items():
            rates = [r for r, _ in self.stats.get(env, {}).values()]
            out[f"{env}/tasks_seen"] = float(len(rates))
            out[f"{env}/tasks_solved"] = float(sum(self.solved(env, t.id) for t in ts))
            priors = self.priors(env, ts)
            out[f"{env}/tasks_active"] = float(sum(w > 0 for w in self._weights(env, ts, priors)))
            for value, p in sorted(priors.items(), key=lambda kv: str(kv[0])):
                out[f"{env}/pass_rate_by_{self.cfg.unseen_prior_key}/{value}"] = p
            counts = [0] * bins
            for r in rates:
                counts[min(int(r * bins), bins - 1)] += 1
            for b, count in enumerate(counts):
                out[f"{env}/pass_rate_hist/{b / bins:.2f}-{(b + 1) / bins:.2f}"] = count / len(rates) if rates else 0.0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {env: {k: list(v) for k, v in entries.items()} for env, entries in self.stats.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats = {env: {k: [float(v[0]), int(v[1])] for k, v in entries.items()} for env, entries in state.items()}
