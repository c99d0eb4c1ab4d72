r"""Public math datasets (GSM8K, MATH, DAPO-17K style) as ``math`` tasks.

Fields (map others with ``columns``, see :mod:`envs.public_data`):

- ``prompt``, else ``problem``, else ``question``: the problem, a string or a list of chat
  messages (DAPO-17K's ``prompt``);
- ``answer``: the final answer (a string or a number). GSM8K's answer column is a worked
  solution ending ``#### 72``: the text after the last ``####`` is the answer;
- ``solution``: used when there is no ``answer``; its final ``\boxed{}`` is the answer (MATH);
- ``id``: optional; otherwise ``math-<index>``.

The row's solution (or GSM8K working), when given, is kept as the task's worked trace.
"""

from __future__ import annotations

from typing import Any

from align.data.errors import DataError
from envs.base import Task
from envs.math.verify import extract_answer
from envs.rows import prompt_messages

FIELDS: tuple[str, ...] = ("id", "prompt", "problem", "question", "answer", "solution")


def _answer(row: dict[str, Any]) -> str:
    answer = row.get("answer")
    if isinstance(answer, bool) or (answer is not None and not isinstance(answer, (str, int, float))):
        raise DataError(f"field 'answer': expected a string or a number, got {type(answer).__name__}")
    if answer is not None:
        text = str(answer)
        if "####" in text:
            text = text.rsplit("####", 1)[1]
        if text.strip():
            return text.strip()
        raise DataError("field 'answer': empty")
    solution = row.get("solution")
    if not isinstance(solution, str):
        raise DataError("field 'answer': missing, and no 'solution' to take a \\boxed{} answer from; map one with columns, e.g. answer=final")
    boxed = extract_answer(solution) if ("\\boxed" in solution or "\\fbox" in solution) else None
    if not boxed:
        raise DataError("field 'solution': no final \\boxed{...} answer in it, and the row has no 'answer'")
    return boxed


def to_task(row: dict[str, Any], index: int) -> Task:
    """One row as a ``math`` task (gold answer a string, as the environment compares it)."""
    prompt = prompt_messages(row)
    answer = _answer(row)
    working = row.get("solution") if isinstance(row.get("solution"), str) else None
    if working is None and isinstance(row.get("answer"), str) and "####" in row["answer"]:
        working = row["answer"].rsplit("####", 1)[0].strip() or None
    meta = {"trace": working} if working else {}
    return Task(id=str(row.get("id") or f"math-{index}"), env="math", prompt=prompt, answer=answer, meta=meta)
