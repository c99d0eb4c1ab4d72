"""RL prompts: per-environment task streams mixed by weight, and the reasoning mode of each prompt.

Each environment's train tasks form a stream reshuffled every pass (deterministic in the
seed); its position is the RL data state saved in checkpoints. Every step takes its share of
prompts from each stream (largest-remainder split of the weights), so one step mixes all
environments.
"""

from __future__ import annotations

import json
import random
from typing import Any

from align.config.schema import EnvSpec, RLReasoningConfig
from align.data.generated import split_counts
from align.reasoning import ReasoningMode
from envs.base import Environment, Task


def load_tasks(spec: EnvSpec, env: Environment, n: int, seed: int, split: str) -> list[Task]:
    """``n`` tasks: from ``spec.data_path`` (JSONL of Task dicts) or the environment's generator."""
    if spec.data_path is not None:
        from align.data.errors import DataError

        from align.data.loading import load_rows

        rows = load_rows(spec.data_path)  # names the row and line of bad JSON or bytes that are not UTF-8
        if not rows:
            raise DataError(f"{spec.data_path}: no tasks in the file (envs entry '{spec.name}', data_path)")
        tasks = []
        for i, row in enumerate(rows):
            try:
                tasks.append(Task.from_dict({**row, "env": spec.name}))
            except (KeyError, TypeError) as e:
                raise DataError(f"not a task ({e}); rows need id, prompt and answer", index=i, source=spec.data_path) from None
        rng = random.Random(f"split:{seed}:{spec.name}")
        rng.shuffle(tasks)
        n_eval = min(spec.num_eval, len(tasks) // 5)
        return tasks[:n_eval] if split == "eval" else tasks[n_eval:]
    # Train and eval streams come from different seeds; eval prompts seen in train are dropped.
    if split == "train":
        return env.generate(n, seed)
    train_keys = {json.dumps(t.prompt, sort_keys=True) for t in env.generate(spec.num_train, seed)}
    evals = [t for t in env.generate(n * 2, seed + 7919) if json.dumps(t.prompt, sort_keys=True) not in train_keys]
    return evals[:n]


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

    def __init__(self, tasks: dict[str, list[Task]], weights: dict[str, float], seed: int) -> None:
        empty = [name for name, ts in tasks.items() if not ts]
        if empty:
            raise ValueError(f"no training tasks for environment(s) {empty}")
        self.tasks, self.weights, self.seed = tasks, weights, seed
        self.position = {name: 0 for name in tasks}

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
        return [self._take(name) for name in self.tasks for _ in range(counts[name])]

    def state_dict(self) -> dict[str, Any]:
        return {"position": dict(self.position)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state["position"]) - set(self.position)
        if unknown:
            raise ValueError(f"checkpoint has task streams for environments not in this recipe: {sorted(unknown)}")
        self.position.update(state["position"])
