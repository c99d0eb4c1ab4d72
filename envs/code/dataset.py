"""Public code datasets (MBPP, HumanEval style) as ``code`` tasks.

Two shapes, told apart by their test fields (map others with ``columns``, see
:mod:`envs.public_data`):

- MBPP: ``prompt`` (MBPP calls it ``text``) and ``test_list`` (assert lines, each one test),
  optionally ``test_setup_code`` and a reference ``solution`` (MBPP: ``code``). The prompt shows
  the asserts, as MBPP's own prompt does, so the policy knows the function's name.
- HumanEval: ``prompt`` (a signature and docstring), ``test`` (a ``check(candidate)`` function)
  and ``entry_point``, optionally ``solution`` (HumanEval: ``canonical_solution``, the body
  completing the prompt) and ``id`` (``task_id``).

The tests run in the code environment's sandbox; the reference program is the task's answer
(``align envs test code --data`` checks that it passes its own tests).
"""

from __future__ import annotations

from typing import Any

from align.data.errors import DataError
from envs.base import Task
from envs.code.generate import FENCE

FIELDS: tuple[str, ...] = (
    "id", "task_id", "prompt", "text", "test_list", "test_setup_code", "test", "entry_point", "solution", "code", "canonical_solution",
)  # fmt: skip


def _str(row: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = row.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"field {name!r}: expected a non-empty string, got {value!r:.80}")
    return value


def _first(row: dict[str, Any], *names: str) -> str | None:
    return next((row[n] for n in names if isinstance(row.get(n), str) and row[n].strip()), None)


def humaneval_prompt(signature: str) -> str:
    return f"Complete this function; reply with the whole function in a python block.\n{FENCE}python\n{signature}{FENCE}"


def _humaneval(row: dict[str, Any], index: int) -> Task:
    signature = _str(row, "prompt")
    test = _str(row, "test")
    entry = _str(row, "entry_point")
    if "def check" not in test:
        raise DataError("field 'test': expected a HumanEval check(candidate) function")
    body = _first(row, "solution", "canonical_solution")
    # The reference is either a whole program or (HumanEval) a body that completes the prompt.
    answer = None if body is None else (body if body.startswith(("def ", "import ", "from ")) else signature + body)
    tid = row.get("id") or row.get("task_id") or f"code-{index}"
    tests = {"kind": "check", "test": test, "entry_point": entry}
    prompt = [{"role": "user", "content": humaneval_prompt(signature)}]
    return Task(id=str(tid), env="code", prompt=prompt, answer=answer, meta={"tests": tests})


def _mbpp(row: dict[str, Any], index: int) -> Task:
    text = _first(row, "prompt", "text")
    if text is None:
        raise DataError("field 'prompt': missing (MBPP calls it 'text'); map your column with columns, e.g. prompt=description")
    asserts = row["test_list"]
    if not isinstance(asserts, list) or not asserts or not all(isinstance(a, str) and a.strip().startswith("assert") for a in asserts):
        raise DataError(f"field 'test_list': expected a non-empty list of assert lines, got {asserts!r:.80}")
    setup = _str(row, "test_setup_code", required=False) if row.get("test_setup_code") else ""
    shown = "\n".join(asserts)
    prompt = f"{text}\nYour code should pass these tests:\n{shown}\nReply with the function in a python block."
    tid = row.get("id") or row.get("task_id") or f"code-{index}"
    tests = {"kind": "asserts", "asserts": list(asserts), "setup": setup}
    reference = _first(row, "solution", "code")
    return Task(id=str(tid), env="code", prompt=[{"role": "user", "content": prompt}], answer=reference, meta={"tests": tests})


def to_task(row: dict[str, Any], index: int) -> Task:
    """One MBPP-style (``test_list``) or HumanEval-style (``test`` + ``entry_point``) row as a ``code`` task."""
    if row.get("test_list") is not None:
        return _mbpp(row, index)
    if row.get("test") is not None or row.get("entry_point") is not None:
        return _humaneval(row, index)
    raise DataError(
        "field 'test_list' or 'test': missing; a code row needs MBPP assert lines (test_list) "
        "or a HumanEval check function (test + entry_point)"
    )
