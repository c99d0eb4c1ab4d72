"""Asynchronous GRPO's prompt stream and prompt-id ledger (``grpo.mode: async``).

The stream hands out prompts one at a time, each with a stable id: its position in the stream
(0, 1, 2, ...). Tasks come from the :class:`~align.algorithms.rl.tasks.TaskMixer` in blocks of
``prompts_per_step`` (so the environments mix as in sync mode), and each prompt's reasoning mode
is :func:`~align.algorithms.rl.tasks.assign_mode`'s, as in sync mode.

Exact resume: :meth:`PromptStream.state_dict` holds, taken at one instant under one lock, the
mixer's state, the tasks of the current block not handed out yet, the next id, and the prompts
handed out but not yet trained (``open``: in flight in the engines or scored and queued). A
resumed stream hands out the ``open`` prompts again first, with their ids, then continues where
the stream stood: no prompt is skipped and none is handed out twice for training. The ledger
(``ledger.jsonl`` in the run folder, one line per step) records which ids each step trained, so
that can be checked after the fact.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.algorithms.rl.batch import StepRollout
from align.algorithms.rl.tasks import TaskMixer, assign_mode
from align.config.schema import RLReasoningConfig
from align.reasoning import ReasoningMode
from align.runlog import cut_jsonl
from envs.base import Task
from rollout.types import Trajectory


@dataclass(frozen=True)
class Prompt:
    """One prompt of the stream: ``index`` is its stable id."""

    index: int
    task: Task
    mode: ReasoningMode


class PromptStream:
    """Prompts in stream order for a producer thread; consumption and state for the learner thread."""

    def __init__(self, mixer: TaskMixer, block: int, reasoning: RLReasoningConfig, seed: int) -> None:
        self.mixer, self.block, self.reasoning, self.seed = mixer, block, reasoning, seed
        self.next_index = 0
        self._block: list[Task] = []  # drawn from the mixer, not handed out yet
        self._replay: list[tuple[int, Task]] = []  # restored open prompts, handed out first
        self._open: dict[int, Task] = {}  # handed out, not trained yet (insertion order = stream order)
        self._lock = threading.Lock()
        self._by_key = {(t.env, t.id): t for ts in mixer.tasks.values() for t in ts}

    def next(self) -> Prompt:
        with self._lock:
            if self._replay:
                index, task = self._replay.pop(0)
            else:
                if not self._block:
                    self._block = self.mixer.next(self.block)
                index, task = self.next_index, self._block.pop(0)
                self.next_index += 1
            self._open[index] = task
        return Prompt(index, task, assign_mode(task, self.reasoning, self.seed))

    def consumed(self, index: int) -> None:
        """The prompt ``index`` is taken by a learner step (trained, or dropped and counted)."""
        with self._lock:
            del self._open[index]

    def observe(self, groups: list[list[Trajectory]]) -> dict[str, float]:
        """The curriculum's observation of trained groups (:meth:`TaskMixer.observe`)."""
        with self._lock:
            return self.mixer.observe(groups)

    def state_dict(self) -> dict[str, Any]:
        """The mixer's state plus the stream's (``stream``); a plain TaskMixer reads it too."""
        with self._lock:
            state = self.mixer.state_dict()
            state["stream"] = {
                "next_index": self.next_index,
                "block": [[t.env, t.id] for t in self._block],
                "open": [[i, t.env, t.id] for i, t in [*self._open.items(), *self._replay]],
            }
            return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mixer.load_state_dict(state)
        stream = state.get("stream")
        if stream is None:  # a sync run's checkpoint: the mixer positions are the whole stream state
            return
        self.next_index = int(stream["next_index"])
        self._block = [self._task(env, tid) for env, tid in stream["block"]]
        self._replay = sorted((int(i), self._task(env, tid)) for i, env, tid in stream["open"])

    def _task(self, env: str, task_id: str) -> Task:
        try:
            return self._by_key[(env, task_id)]
        except KeyError:
            raise ValueError(f"the checkpoint's prompt stream holds task {task_id!r} of environment {env!r}, which this recipe's tasks lack") from None


class PromptLedger:
    """``ledger.jsonl``: per step, the stream ids of the prompts it took (``prompts``), those that
    trained (``trained``; the rest were all-equal groups dropped by dynamic sampling, or filler),
    and their ``env/task`` ids. A resumed run cuts it back to the checkpoint's step first."""

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.path = run_dir / "ledger.jsonl"
        if resume_step is not None:
            cut_jsonl(self.path, resume_step)
        else:
            self.path.write_text("")

    def write(self, step: int, ro: StepRollout) -> None:
        kept = {id(g) for g in ro.kept}
        row = {"step": step, "prompts": ro.prompt_ids, "trained": [i for i, g in zip(ro.prompt_ids, ro.all_groups) if id(g) in kept],
               "tasks": [f"{g.trajectories[0].env}/{g.trajectories[0].task.id}" for g in ro.all_groups]}  # fmt: skip
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
