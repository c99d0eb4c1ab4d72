"""Evaluation metrics on constructed trajectories with known answers."""

from dataclasses import dataclass, field

import pytest

from align.evaluate import standard_modes, summarize
from align.reasoning import ReasoningMode
from align.report import headline


@dataclass
class T:
    """The fields of rollout.types.Trajectory that the metrics read."""

    env: str
    mode: ReasoningMode
    correct: bool | None
    reward: float
    thinking_tokens: int = 0
    forced_close: bool = False
    budget: int | None = None
    num_policy_tokens: int = 10
    info: dict = field(default_factory=dict)


def test_accuracy_toggle_and_budget_metrics() -> None:
    think, off, b16 = ReasoningMode(True), ReasoningMode(False), ReasoningMode(True, 16)
    results = [
        ("think", T("math", think, True, 1.0, thinking_tokens=20)),
        ("think", T("math", think, False, 0.0, thinking_tokens=30)),
        ("think", T("code", think, True, 1.0, thinking_tokens=8)),
        ("no_think", T("math", off, True, 1.0)),
        ("no_think", T("math", off, False, 0.0, thinking_tokens=3)),  # thought when told not to
        ("no_think", T("code", off, None, 0.0, info={"error": "sandbox crashed"})),
        ("budget_16", T("math", b16, True, 1.0, thinking_tokens=12, budget=16)),
        ("budget_16", T("math", b16, True, 1.0, thinking_tokens=16, budget=16, forced_close=True)),  # forced: not adherent
        ("budget_16", T("math", b16, False, 0.0, thinking_tokens=16, budget=16)),
        ("budget_16", T("code", b16, True, 1.0, thinking_tokens=5, budget=16)),
    ]
    s = summarize(results)
    assert s["math"]["think"]["accuracy"] == 0.5 and s["math"]["think"]["thinking_tokens"] == 25
    assert s["all"]["think"]["accuracy"] == pytest.approx(2 / 3)
    assert s["math"]["no_think"]["toggle_compliance"] == 0.5
    assert s["all"]["no_think"]["toggle_compliance"] == pytest.approx(2 / 3)
    assert s["code"]["no_think"]["accuracy"] == 0.0 and s["code"]["no_think"]["errors"] == 1  # a crash counts as wrong
    assert s["math"]["budget_16"]["budget_adherence"] == pytest.approx(2 / 3)
    assert s["math"]["budget_16"]["forced_close_rate"] == pytest.approx(1 / 3)
    assert s["all"]["budget_16"]["budget_adherence"] == 0.75
    assert "toggle_compliance" not in s["math"]["think"] and "budget_adherence" not in s["math"]["think"]
    h = headline(s, [16])
    assert h["toggle_compliance"] == pytest.approx(2 / 3) and h["budget_adherence_min"] == 0.75
    assert h["accuracy_budget_16"] == 0.75


def test_standard_modes() -> None:
    labels = [m.label for m in standard_modes([16, 64])]
    assert labels == ["think", "no_think", "budget_16", "budget_64"]
    assert standard_modes([16])[2].mode == ReasoningMode(True, 16)


def test_align_eval_names_a_missing_model(tmp_path, capsys) -> None:
    from align.cli import main

    assert main(["eval", "--model", str(tmp_path / "nope"), "--recipe", "tiny"]) == 2
    assert "no HF checkpoint" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    assert main(["eval", "--model", str(tmp_path), "--recipe", "tiny-sft"]) == 2
    assert "takes a pipeline or rl recipe" in capsys.readouterr().err
