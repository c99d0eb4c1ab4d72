"""The report's statistics: Wilson intervals, McNemar's exact test, and where the report marks a change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.evaluate import summarize
from align.reasoning import ReasoningMode
from align.report import GRADES, OUTCOMES, read_outcomes, write_report
from align.stats import mcnemar_exact, paired_change, wilson_interval
from tests.align.test_evaluate import T


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        # By hand: center (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n), z = 1.95996.
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (24, 48, 0.3639, 0.6361),
        (1, 4, 0.0456, 0.6994),
    ],
)
def test_wilson_interval_matches_hand_computed_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_interval_edge_cases() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 6, 2 / 64),  # 2 * P(X <= 0), X ~ Bin(6, 1/2)
        (0, 5, 2 / 32),
        (1, 9, 2 * (1 + 10) / 1024),
        (2, 8, 2 * (1 + 10 + 45) / 1024),
        (5, 3, 2 * (1 + 8 + 28 + 56) / 256),
        (3, 3, 1.0),
        (0, 0, 1.0),
    ],
)
def test_mcnemar_exact_matches_the_binomial_tail(b: int, c: int, p: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(p) and mcnemar_exact(c, b) == pytest.approx(p)


def test_paired_change_counts_discordant_tasks_only() -> None:
    before = {f"t{i}": i < 10 for i in range(20)}
    after = {f"t{i}": i < 16 for i in range(20)}  # 6 gained, none lost
    c = paired_change(before, after)
    assert (c.n, c.before, c.after, c.gained, c.lost) == (20, 0.5, 0.8, 6, 0)
    assert c.p_value == pytest.approx(1 / 32) and c.significant()
    # The same change read as two independent samples is not beyond noise: the intervals overlap.
    assert wilson_interval(10, 20)[1] > wilson_interval(16, 20)[0]


# ---------------------------------------------------------------- the report

THINK, OFF, B16 = ReasoningMode(True), ReasoningMode(False), ReasoningMode(True, 16)


def _stage(right: dict[str, int], n: int) -> tuple[dict, dict]:
    """(summary, outcomes) of a stage where, per environment, the first right[env] of n tasks are right in every mode."""
    rows, outcomes = [], {"all": {}}
    for env, k in right.items():
        for label, mode in (("think", THINK), ("no_think", OFF), ("budget_16", B16)):
            verdicts = {f"{env}-{i}": i < k for i in range(n)}
            rows += [(label, T(env, mode, ok, float(ok), thinking_tokens=8, budget=mode.budget)) for ok in verdicts.values()]
            outcomes.setdefault(env, {})[label] = verdicts
            outcomes["all"].setdefault(label, {}).update({f"{env}/{t}": ok for t, ok in verdicts.items()})
    return summarize(rows), outcomes


def _report(tmp_path: Path, with_outcomes: bool = True, grades: dict | None = None) -> str:
    from align.config import load_recipe

    r = load_recipe("tiny", [f"output_dir={tmp_path}", "eval.budgets=[16]"]).recipe
    # math: 10 -> 16 of 20 right, the same 10 still right (6 gained, 0 lost: p = 0.031).
    # code: 10 -> 12, but as 5 gained and 3 lost (p = 0.73): not beyond noise.
    sft, sft_out = _stage({"math": 10, "code": 10}, 20)
    rl, rl_out = _stage({"math": 16, "code": 12}, 20)
    for mode in rl_out["code"]:
        shuffled = {f"code-{i}": (i < 7 or 10 <= i < 15) for i in range(20)}  # 12 right: 7 kept, 3 lost, 5 gained
        rl_out["code"][mode] = shuffled
        rl_out["all"][mode].update({f"code/{t}": ok for t, ok in shuffled.items()})
    evals = {"tasks_per_env": {"math": 20, "code": 20}, "sft": sft, "rl": rl}
    if with_outcomes:
        evals[OUTCOMES] = {"sft": sft_out, "rl": rl_out}
    if grades is not None:
        evals[GRADES] = grades
    return write_report(tmp_path, r, evals, {"sft": 1.0, "rl": 2.0}, {"sft": tmp_path / "sft", "rl": tmp_path / "rl"}).read_text()


def test_report_marks_only_changes_beyond_noise(tmp_path: Path) -> None:
    text = _report(tmp_path)
    env_rows = text.split("## Accuracy per environment")[1].split("##")[0]
    header = next(line for line in env_rows.splitlines() if line.startswith("| stage |"))
    rl_row = next(line for line in env_rows.splitlines() if line.startswith("| rl |"))
    cells = dict(zip((c.strip() for c in header.strip("|").split("|")), (c.strip() for c in rl_row.strip("|").split("|"))))
    assert cells["math think"] == cells["math no_think"] == "0.800 [0.58, 0.92] (+0.300 *)", cells
    assert cells["code think"] == "0.600 [0.39, 0.78] (+0.100)", cells
    assert "| math | think | 20 | 0.500 | 0.800 | +0.300 | 6 | 0 | 0.0312 | yes |" in text
    assert "| code | think | 20 | 0.500 | 0.600 | +0.100 | 5 | 3 | 0.727 | no |" in text
    # Over all 40 tasks: 11 gained, 3 lost, p = 2 * P(X <= 3), X ~ Bin(14, 1/2) = 0.057: not marked.
    assert "| all | think | 40 | 0.500 | 0.700 | +0.200 | 11 | 3 | 0.0574 | no |" in text
    head = next(line for line in text.split("## Headline")[1].splitlines() if line.startswith("| rl |"))
    assert "0.700 [0.55, 0.82] (+0.200) |" in head and "*" not in head


def test_report_gives_think_accuracy_per_grade(tmp_path: Path) -> None:
    # math: tasks 0-9 grade 1 (right at both stages), 10-19 grade 2 (sft 0 of 10, rl 6: 6 gained, p = 0.031).
    grades = {"math": {f"math-{i}": 1 if i < 10 else 2 for i in range(20)}}
    text = _report(tmp_path, grades=grades)
    table = text.split("## /think accuracy per grade")[1].split("##")[0]
    assert "| env | grade | tasks | sft | rl |" in table
    assert "| math | 1 | 10 | 1.000 [0.72, 1.00] | 1.000 [0.72, 1.00] (+0.000) |" in table
    assert "| math | 2 | 10 | 0.000 [0.00, 0.28] | 0.600 [0.31, 0.83] (+0.600 *) |" in table
    assert "| code |" not in table  # no grades given for code
    assert "per grade" not in _report(tmp_path)  # no grades, no table


def test_report_without_per_task_outcomes_marks_nothing(tmp_path: Path) -> None:
    text = _report(tmp_path, with_outcomes=False)
    assert "(+0.300)" in text and " *)" not in text and "paired changes" not in text


def test_report_has_budgets_per_environment_with_intervals(tmp_path: Path) -> None:
    text = _report(tmp_path)
    # Every budgeted trajectory thought 8 tokens within its 16 without forcing: adherence 20/20.
    assert "| math | 16 | rl | 0.800 [0.58, 0.92] | 8.000 | 1.000 [0.84, 1.00] | 0.000 |" in text
    assert "| code | 16 | sft | 0.500 [0.30, 0.70] | 8.000 | 1.000 [0.84, 1.00] | 0.000 |" in text
    assert "| all | 16 | rl | 0.700 [0.55, 0.82] |" in text


def test_read_outcomes_from_eval_samples(tmp_path: Path) -> None:
    rows = [{"mode": "think", "env": "math", "task": "m1", "correct": True}, {"mode": "think", "env": "code", "task": 7, "correct": None},
            {"mode": "no_think", "env": "math", "task": "m1", "correct": False}]  # fmt: skip
    path = tmp_path / "eval_sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_outcomes(path) == {
        "math": {"think": {"m1": True}, "no_think": {"m1": False}},
        "code": {"think": {"7": False}},
        "all": {"think": {"math/m1": True, "code/7": False}, "no_think": {"math/m1": False}},
    }


def test_paired_table_lists_modes_in_ladder_order(tmp_path: Path) -> None:
    text = _report(tmp_path)
    modes = [line.split("|")[2].strip() for line in text.split("paired changes")[1].splitlines() if line.startswith("| math |")]
    assert modes == ["think", "no_think", "budget_16"]
    from align.report import _mode_order

    assert sorted(["budget_128", "no_think", "budget_16", "think"], key=_mode_order) == ["think", "no_think", "budget_16", "budget_128"]


def test_sampled_think_gets_its_columns_and_paired_test(tmp_path: Path) -> None:
    """With eval.sampled_temperature the report adds think_sampled: a headline column, per-environment
    columns and the paired rows, tested like the greedy modes."""
    from align.config import load_recipe

    r = load_recipe("tiny", [f"output_dir={tmp_path}", "eval.budgets=[16]", "eval.sampled_temperature=0.9"]).recipe
    stages, outs = {}, {}
    for name, k in (("sft", 4), ("rl", 12)):  # sampled: 4 -> 12 of 20 right, 8 gained, 0 lost (p = 0.0078)
        summary, outcomes = _stage({"math": 10}, 20)
        sampled = {f"math-{i}": i < k for i in range(20)}
        rows = [("think_sampled", T("math", THINK, ok, float(ok), thinking_tokens=8)) for ok in sampled.values()]
        extra = summarize(rows)
        for env in ("math", "all"):
            summary[env]["think_sampled"] = extra[env]["think_sampled"]
        outcomes["math"]["think_sampled"] = sampled
        outcomes["all"]["think_sampled"] = {f"math/{t}": ok for t, ok in sampled.items()}
        stages[name], outs[name] = summary, outcomes
    evals = {"tasks_per_env": {"math": 20}, **stages, OUTCOMES: outs}
    text = write_report(tmp_path, r, evals, {"sft": 1.0, "rl": 2.0}, {"sft": tmp_path / "sft", "rl": tmp_path / "rl"}).read_text()
    assert "think_sampled at temperature 0.9" in text
    head = text.split("## Headline")[1].splitlines()
    assert "accuracy_think_sampled" in head[2] and head[5].endswith("| 0.600 [0.39, 0.78] (+0.400 *) |"), head[:6]
    env_rows = text.split("## Accuracy per environment")[1].split("##")[0].splitlines()
    assert "| stage | math think | math no_think | math think_sampled |" in env_rows
    assert any(row.startswith("| rl | 0.500 [") and row.endswith("| 0.600 [0.39, 0.78] (+0.400 *) |") for row in env_rows), env_rows
    modes = [line.split("|")[2].strip() for line in text.split("paired changes")[1].splitlines() if line.startswith("| math |")]
    assert modes == ["think", "no_think", "budget_16", "think_sampled"]
    assert "| math | think_sampled | 20 | 0.200 | 0.600 | +0.400 | 8 | 0 | 0.00781 | yes |" in text


def test_sampled_think_with_k_samples_gets_pass_at_k(tmp_path: Path) -> None:
    """eval.sampled_k=4: the headline adds pass@k, a table gives pass@k and the mixed share per
    environment, and the interval counts tasks (20), not samples (80)."""
    from types import SimpleNamespace

    from align.config import load_recipe

    r = load_recipe("tiny", [f"output_dir={tmp_path}", "eval.budgets=[16]", "eval.sampled_k=4"]).recipe
    stages, outs = {}, {}
    for name, solved in (("sft", 5), ("rl", 10)):  # tasks right in every sample; tasks 10-14 right in one sample of four
        summary, outcomes = _stage({"math": 10}, 20)
        tasks = [SimpleNamespace(id=f"math-{i}") for i in range(20)]
        rows = [("think_sampled", T("math", THINK, i < solved or (10 <= i < 15 and j == 0), 1.0, task=tasks[i])) for i in range(20) for j in range(4)]
        extra = summarize(rows)
        for env in ("math", "all"):
            summary[env]["think_sampled"] = extra[env]["think_sampled"]
        stages[name], outs[name] = summary, outcomes
    evals = {"tasks_per_env": {"math": 20}, **stages, OUTCOMES: outs}
    text = write_report(tmp_path, r, evals, {"sft": 1.0, "rl": 2.0}, {"sft": tmp_path / "sft", "rl": tmp_path / "rl"}).read_text()
    assert "think_sampled at temperature 1.0, 4 samples per task" in text
    head = text.split("## Headline")[1].splitlines()
    assert head[2].endswith("| accuracy_think_sampled | think_sampled_pass_at_k |"), head[2]
    # sft: (5 * 4 + 5) / 80 = 0.3125 of samples right, pass@4 10/20; the interval is over 20 tasks: 0.3125 * 20 ~ 6 of 20.
    lo, hi = wilson_interval(6, 20)
    assert head[4].endswith(f"| 0.312 [{lo:.2f}, {hi:.2f}] | 0.500 |"), head[4]
    assert head[5].endswith("| 0.750 (+0.250) |"), head[5]
    assert "| math | sft | 0.312 | 0.500 | 0.250 |" in text  # mixed: tasks 10-14, 5 of 20
    assert "| math | rl | 0.562 | 0.750 | 0.250 |" in text


def test_the_report_plays_what_the_eval_section_asks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate_stages and align eval on a pipeline recipe play the same modes: eval.sampled_k
    samples of think_sampled (the report's header and pass@k table rest on them)."""
    import align.report as report
    from align.config import load_recipe
    from align.config.stages import load_stages
    from align.evaluate import pipeline_plan

    r = load_recipe("tiny", [f"output_dir={tmp_path}", "eval.sampled_temperature=1.0", "eval.sampled_k=4"]).recipe
    played = []

    def fake_evaluate(path, envs, tasks, modes, sampling, *args, samples_path, **kwargs):  # no policy to play on CPU in a unit test
        played.append((modes, sampling))
        samples_path.write_text("")
        return {}

    monkeypatch.setattr(report, "evaluate_checkpoint", fake_evaluate)
    monkeypatch.setattr(report, "print_table", lambda *a: None)
    report.evaluate_stages(r, {"sft": tmp_path}, load_stages(r)[0])
    (modes, sampling), = played
    assert (modes, sampling) == pipeline_plan(r.eval)
    assert (modes[-1].label, modes[-1].temperature, modes[-1].samples) == ("think_sampled", 1.0, 4)
    assert sampling.max_new_tokens == r.eval.max_new_tokens
