"""RL prompts: per-environment task streams mixed by weight, and the reasoning mode of each prompt.

Each environment's train tasks form a stream reshuffled every pass (deterministic in the
seed); its position is the RL data state saved in checkpoints. Every step takes its share of
prompts from each stream (largest-remainder split of the weights), so one step mixes all
environments. With ``grpo.curriculum.enabled`` a :class:`~align.algorithms.rl.curriculum.Curriculum`
chooses each environment's tasks by pass rate instead of the shuffled stream, and its state is
saved with the positions.
"""

from __future__ import annotations

import random
from typing import Any

from align.algorithms.rl.curriculum import Curriculum
from align.config.schema import CurriculumConfig, EnvSpec, RLReasoningConfig
from align.data.errors import DataError
from align.data.generated import split_counts
from align.heldout import heldout_tasks, task_key
from align.reasoning import ReasoningMode
from envs.base import Environment, Task, task_source
from envs.public_data import load_env_tasks, split_tasks
from rollout.types import Trajectory


def load_tasks(spec: EnvSpec, env: Environment, n: int, seed: int, split: str) -> list[Task]:
    """``n`` tasks: from ``spec.data_path`` (any format of :mod:`envs.public_data`) or the environment's generator."""
    if spec.data_path is not None:
        tasks, skipped = load_env_tasks(spec.name, spec.data_path, spec.columns, spec.on_bad_row)
        if not tasks:
            raise DataError(f"{spec.data_path}: no usable tasks (envs entry '{spec.name}', data_path; {skipped} bad rows skipped)")
        if skipped and split == "train":
            print(f"{spec.name}: skipped {skipped} bad row(s) of {spec.data_path} (on_bad_row=skip)")
        train, evals = split_tasks(tasks, spec.num_eval, seed, spec.name)
        return evals if split == "eval" else train
    if split == "train":
        return task_source(env).generate(n, seed)
    train_keys = {task_key(env, t) for t in task_source(env).generate(spec.num_train, seed)}
    return heldout_tasks({spec.name: env}, {spec.name: n}, train_keys, seed)


def assign_mode(task: Task, cfg: RLReasoningConfig, seed: int) -> ReasoningMode:
    """The prompt's toggle and budget, deterministic in the task id and seed."""
    rng = random.Random(f"mode:{seed}:{task.env}:{task.id}")
    u = rng.random()
    if u < cfg.no_think_fraction:
        return ReasoningMode(thinking=False)
    if u < cfg.no_think_fraction + cfg.budget_fraction and cfg.budgets:
        return ReasoningMode(thinking=True, budget=rng.choice(cfg.budgets))
    return ReasoningMode(thinking=True)


class TaskMixer:
    """Weighted, resumable mixing of per-environment task streams."""

    def __init__(self, tasks: dict[str, list[Task]], weights: dict[str, float], seed: int, curriculum: CurriculumConfig | None = None) -> None:
        empty = [name for name, ts in tasks.items() if not ts]
        if empty:
            raise ValueError(f"no training tasks for environment(s) {empty}")
        self.tasks, self.weights, self.seed = tasks, weights, seed
        self.position = {name: 0 for name in tasks}
        self.curriculum = Curriculum(curriculum, seed) if curriculum is not None and curriculum.enabled else None

    def _take(self, name: str) -> Task:
        ts = self.tasks[name]
        pos = self.position[name]
        epoch, i = divmod(pos, len(ts))
        order = list(range(len(ts)))
        random.Random(f"stream:{self.seed}:{name}:{epoch}").shuffle(order)
        self.position[name] = pos + 1
        return ts[order[i]]

    def next(self, n: int) -> list[Task]:
        counts = split_counts(self.weights, n)
        if self.curriculum is None:
            return [self._take(name) for name in self.tasks for _ in range(counts[name])]
        out = []
        for name in self.tasks:
            if counts[name]:
                out += self.curriculum.draw(name, self.tasks[name], counts[name], self.position[name])
                self.position[name] += counts[name]  # tasks taken, as the streams count
        return out

    def observe(self, groups: list[list[Trajectory]]) -> dict[str, float]:
        """Feed a round's groups to the curriculum; its metrics (empty without one)."""
        if self.curriculum is None:
            return {}
        self.curriculum.observe(groups)
        return self.curriculum.metrics(self.tasks)

    def state_dict(self) -> dict[str, Any]:
        if self.curriculum is not None:
            return {"position": dict(self.position), "curriculum": self.curriculum.state_dict()}
        return {"position": dict(self.position)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state["position"]) - set(self.position)
        if unknown:
            raise ValueError(f"checkpoint has task streams for environments not in this recipe: {sorted(unknown)}")
        self.position.update(state["position"])
        if self.curriculum is not None:
            self.curriculum.load_state_dict(state.get("curriculum", {}))
