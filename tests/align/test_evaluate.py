"""Evaluation metrics on constructed trajectories with known answers."""

from dataclasses import dataclass, field
from itertools import count
from types import SimpleNamespace

import pytest

from align.config.schema import SamplingConfig
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
    task: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(id=f"task-{next(_IDS)}"))  # a task of its own


_IDS = count()


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


def test_k_samples_per_task_give_pass_at_k_and_the_mixed_share() -> None:
    """Three tasks, four samples each: one right once, one never, one always."""
    think = ReasoningMode(True)
    verdicts = {"a": [True, False, False, False], "b": [False] * 4, "c": [True] * 4}
    tasks = {name: SimpleNamespace(id=name) for name in verdicts}
    results = [("think_sampled", T("math", think, ok, float(ok), task=tasks[name])) for name, oks in verdicts.items() for ok in oks]
    results += [("think", T("math", think, True, 1.0, task=tasks[name])) for name in verdicts]  # greedy: one per task
    s = summarize(results)
    cell = s["math"]["think_sampled"]
    assert (cell["n"], cell["samples_per_task"]) == (12, 4)
    assert cell["accuracy"] == pytest.approx(5 / 12)  # the mean over every sample
    assert cell["pass_at_k"] == pytest.approx(2 / 3) and cell["mixed_share"] == pytest.approx(1 / 3)
    assert s["all"]["think_sampled"]["pass_at_k"] == pytest.approx(2 / 3)
    assert "pass_at_k" not in s["math"]["think"] and "samples_per_task" not in s["math"]["think"]


def test_standard_modes() -> None:
    labels = [m.label for m in standard_modes([16, 64])]
    assert labels == ["think", "no_think", "budget_16", "budget_64"]
    assert standard_modes([16])[2].mode == ReasoningMode(True, 16)
    assert {m.temperature for m in standard_modes([16])} == {0.0}
    sampled = standard_modes([16], sampled_temperature=0.8)[-1]
    assert (sampled.label, sampled.mode, sampled.temperature, sampled.samples) == ("think_sampled", ReasoningMode(True), 0.8, 1)
    assert standard_modes([16], sampled_temperature=0.8, sampled_k=8)[-1].samples == 8


def test_play_samples_only_the_sampled_mode_at_its_temperature(tiny_tokenizer) -> None:
    """Greedy modes go out at temperature 0 and think_sampled at its own, every task in every mode,
    through one batch function; each trajectory comes back under its mode's label."""
    import asyncio

    from align.evaluate import play
    from envs.math.env import MathEnv, MathParams
    from rollout.types import GenOutput

    env = MathEnv(MathParams())
    tasks = env.generate(3, seed=0)
    seen: list[float] = []
    answer = tiny_tokenizer.encode("<think>1</think>\\boxed{1}", add_special_tokens=False) + [tiny_tokenizer.eos_token_id]

    async def generate(requests):
        seen.extend(r.temperature for r in requests)
        return [GenOutput(answer, [0.0] * len(answer), "stop") for _ in requests]

    modes = standard_modes([16], sampled_temperature=0.7)
    sampling = SamplingConfig(max_new_tokens=32, max_answer_tokens=8)
    results = asyncio.run(play({"math": env}, tasks, modes, tiny_tokenizer, generate, sampling, max_turns=1, seed=0))
    assert sorted(seen) == [0.0] * 9 + [0.7] * 3
    by_label = {}
    for label, t in results:
        by_label.setdefault(label, []).append(t.task.id)
    assert by_label == {m.label: [t.id for t in tasks] for m in modes}
    assert all(t.mode == ReasoningMode(True) for label, t in results if label == "think_sampled")


def test_play_draws_k_samples_per_task_for_the_sampled_mode_only(tiny_tokenizer) -> None:
    import asyncio
    from collections import Counter

    from align.evaluate import play
    from envs.math.env import MathEnv, MathParams
    from rollout.types import GenOutput

    env = MathEnv(MathParams())
    tasks = env.generate(3, seed=0)
    seen: list[tuple[float, int | None]] = []
    answer = tiny_tokenizer.encode("<think>1</think>\\boxed{1}", add_special_tokens=False) + [tiny_tokenizer.eos_token_id]

    async def generate(requests):
        seen.extend((r.temperature, r.seed) for r in requests)
        return [GenOutput(answer, [0.0] * len(answer), "stop") for _ in requests]

    modes = standard_modes([], sampled_temperature=1.0, sampled_k=4)
    sampling = SamplingConfig(max_new_tokens=32, max_answer_tokens=8)
    results = asyncio.run(play({"math": env}, tasks, modes, tiny_tokenizer, generate, sampling, max_turns=1, seed=0))
    assert Counter(label for label, _ in results) == {"think": 3, "no_think": 3, "think_sampled": 12}
    assert Counter(t.task.id for label, t in results if label == "think_sampled") == {t.id: 4 for t in tasks}
    sampled_seeds = [seed for temperature, seed in seen if temperature == 1.0]
    assert len(sampled_seeds) == 12 and len(set(sampled_seeds)) == 12  # four different draws of each task


def test_eval_sampled_k_needs_a_temperature() -> None:
    from align.config import load_recipe
    from align.config.recipes import RecipeError

    with pytest.raises(RecipeError, match="sampled_temperature"):
        load_recipe("tiny", ["eval.sampled_temperature=null", "eval.sampled_k=4"])
    assert load_recipe("tiny", ["eval.sampled_k=4"]).recipe.eval.sampled_k == 4


def test_align_eval_names_a_missing_model(tmp_path, capsys) -> None:
    from align.cli import main

    assert main(["eval", "--model", str(tmp_path / "nope"), "--recipe", "tiny"]) == 2
    assert "no HF checkpoint" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    assert main(["eval", "--model", str(tmp_path), "--recipe", "tiny-sft"]) == 2
    assert "takes a pipeline or rl recipe" in capsys.readouterr().err


def test_report_compares_each_stage_with_the_one_before(tmp_path) -> None:
    """write_report on two constructed stages: the headline deltas, the JSON and the plots."""
    import json

    from align.config import load_recipe
    from align.report import write_report

    r = load_recipe("tiny", [f"output_dir={tmp_path}", "eval.budgets=[16]"]).recipe
    think, off, b16 = ReasoningMode(True), ReasoningMode(False), ReasoningMode(True, 16)

    def stage(correct_think: int) -> dict:
        rows = [("think", T("math", think, i < correct_think, float(i < correct_think), thinking_tokens=10)) for i in range(4)]
        rows += [("no_think", T("math", off, True, 1.0)), ("budget_16", T("math", b16, True, 1.0, thinking_tokens=12, budget=16))]
        return summarize(rows)

    evals = {"tasks_per_env": {"math": 4}, "sft": stage(1), "rl": stage(3)}
    dirs = {}
    for name, losses in (("sft", [2.0, 1.0]), ("rl", None)):
        d = tmp_path / name
        d.mkdir()
        recs = [{"step": i + 1, "split": "train", "loss": v} for i, v in enumerate(losses)] if losses else [
            {"step": 1, "split": "train", "reward": 0.2}, {"step": 2, "split": "train", "reward": 0.6}]  # fmt: skip
        (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
        dirs[name] = d
    report = write_report(tmp_path, r, evals, {"sft": 12.0, "rl": 30.0}, dirs)
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| sft |") or line.startswith("| rl |")]
    # Wilson 95% intervals of 1/4 and 3/4; no per-task outcomes given, so no change is marked.
    assert rows[0].startswith("| sft | 0.250 [0.05, 0.70] |") and rows[1].startswith("| rl | 0.750 [0.30, 0.95] (+0.500) |"), rows[:2]
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["headline"]["rl"]["accuracy_think"] == 0.75 and data["timings_s"] == {"sft": 12.0, "rl": 30.0}
    for png in ("accuracy_vs_budget.png", "thinking_vs_budget.png", "training_curves.png"):
        assert (tmp_path / png).stat().st_size > 1000 and f"]({png})" in text
    assert "| rl | 30 |" in text


def test_align_eval_of_an_rl_recipe_uses_its_envs_params(tmp_path, monkeypatch) -> None:
    """`align eval --recipe tiny-rlhf` scores the run's own held-out prompts: its chat env's params
    (grades 1-2) reach the environment, so the tasks are those the RL driver holds out."""
    from types import SimpleNamespace

    import align.evaluate as ev
    from align.algorithms.rl.tasks import load_tasks
    from align.config import load_recipe
    from envs.registry import make_env

    seen = {}

    def capture(model, envs, tasks, *args, **kwargs):  # stands in for the vLLM evaluation: only the tasks matter here
        seen["tasks"] = tasks
        return {}

    monkeypatch.setattr(ev, "evaluate_checkpoint", capture)
    monkeypatch.setattr(ev, "print_table", lambda *a: None)
    (tmp_path / "config.json").write_text("{}")
    assert ev.cmd_eval(SimpleNamespace(recipe="tiny-rlhf", overrides=[], model=str(tmp_path))) == 0
    spec = load_recipe("tiny-rlhf").recipe.envs[0]
    held_out = load_tasks(spec, make_env(spec.name, spec.params), spec.num_eval, 0, "eval")
    assert [t.id for t in seen["tasks"]] == [t.id for t in held_out]
    assert {t.meta["source_task"]["meta"]["grade"] for t in seen["tasks"]} == {1, 2}
