"""``align envs list|sample|test`` through align's real command line."""

from __future__ import annotations

from typing import ClassVar

import pytest

from align.cli import main
from envs.math import MathEnv
from envs.registry import ENVS, register_env


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps tables to the terminal width; make it wide so rows stay on one line."""
    import envs.cli

    monkeypatch.setattr(envs.cli.out, "_width", 250)
    monkeypatch.setattr(envs.cli.err, "_width", 250)


def test_list_shows_name_source_package_and_description(capsys) -> None:
    assert main(["envs", "list"]) == 0
    out = capsys.readouterr().out
    math_row = next(line for line in out.splitlines() if " math " in line)
    assert "built-in" in math_row and "align 0.1.0" in math_row and "math-verify" in math_row
    assert "instruction_following" in out


def test_sample_prints_prompts_gold_and_demonstrations(capsys) -> None:
    assert main(["envs", "sample", "math", "-n", "3", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    for task in MathEnv().generate(3, seed=4):
        assert task.id in out
        assert task.prompt[0]["content"] in out
        assert f'gold: "{task.answer}"' in out
    assert "demonstration:" in out and "\\\\boxed{" in out


def test_test_runs_self_checks_and_passes(capsys) -> None:
    assert main(["envs", "test", "instruction_following"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out
    n = len(ENVS.get_class("instruction_following")().self_checks())
    assert f"{n}/{n} self-checks passed" in out


def test_unknown_name_exits_2_with_candidates(capsys) -> None:
    for action in (["test", "mathh"], ["sample", "mathh"]):
        assert main(["envs", *action]) == 2
        err = capsys.readouterr().err
        assert "unknown environment 'mathh'" in err and "Did you mean 'math'?" in err and "instruction_following" in err


def test_failing_self_checks_exit_nonzero(capsys, monkeypatch, crashing_env_cls: type) -> None:
    monkeypatch.setattr(ENVS, "_explicit", {})

    class LyingEnv(crashing_env_cls):  # type: ignore[misc, valid-type]
        name: ClassVar[str] = "lying"

        def self_checks(self):
            good = super().self_checks()[0]
            return [good, type(good)(good.task, good.actions, False, "expects the wrong outcome")]

    register_env(crashing_env_cls)
    register_env(LyingEnv)
    assert main(["envs", "test", "lying"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "1/2 self-checks passed" in out
    # A check whose step crashes fails even though "wrong" was expected: crashing is not a verdict.
    assert main(["envs", "test", "crashing"]) == 1
    out = capsys.readouterr().out
    assert "ZeroDivisionError: plugin bug" in out and "1/2 self-checks passed" in out
