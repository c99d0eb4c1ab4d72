"""README's "Data formats": every example row it shows passes the check its job runs, and so does every
row of the example files the section points to (``examples/data/``). A row edited in one place
and not the other, or a format change the README did not follow, fails here."""

import json
import re
from pathlib import Path

import pytest

from align.data.helpsteer import validate_helpsteer_row
from align.data.validate import check_messages, validate_attribute_row, validate_preference_row, validate_sft_row
from envs.base import Task
from envs.registry import ENVS

ROOT = Path(__file__).resolve().parents[2]


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _rows() -> dict[str, dict]:
    """The README's one-line JSON rows, by the bold label of the bullet they follow."""
    rows: dict[str, dict] = {}
    label = None
    for line in _section("Data formats").splitlines():
        if m := re.match(r"- \*\*(.+?)\*\*", line):
            label = m.group(1)
        elif (m := re.fullmatch(r"\s*`(\{.*\})`\s*", line)) and label is not None:
            rows[label] = json.loads(m.group(1))
    return rows


def _check_task(row: dict) -> None:
    task = Task.from_dict(row)
    assert task.env in ENVS.names(), task.env
    check_messages(task.prompt, "prompt")


CHECKS = {
    "SFT": validate_sft_row,
    "Preferences": validate_preference_row,
    "Ratings": validate_attribute_row,
    "HelpSteer ratings": validate_helpsteer_row,
    "RL tasks": _check_task,
}


def test_the_readme_shows_one_row_per_job_and_each_passes_its_check() -> None:
    rows = _rows()
    assert sorted(rows) == sorted(CHECKS), rows
    for label, row in rows.items():
        CHECKS[label](row)


@pytest.mark.parametrize(("name", "check"), [("sft", validate_sft_row), ("preferences", validate_preference_row),
                                             ("ratings", validate_attribute_row), ("helpsteer", validate_helpsteer_row)])  # fmt: skip
def test_the_example_files_the_readme_runs_are_valid(name: str, check) -> None:
    path = ROOT / "examples" / "data" / f"{name}.jsonl"
    assert f"examples/data/{name}.jsonl" in _section("Data formats")
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    assert lines
    for line in lines:
        check(json.loads(line))
