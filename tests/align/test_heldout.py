"""The single held-out selector: deterministic, honours ``exclude``, and in the shipped ``tiny``
pipeline none of its tasks is a prompt that any stage trains on."""

from __future__ import annotations

from collections import Counter
from typing import Any

from align.algorithms.rl.tasks import load_tasks
from align.config import LoadedRecipe, load_recipe
from align.config.schema import PipelineRecipe
from align.config.stages import load_stages
from align.data.build import load_splits
from align.data.generated import prompt_key
from align.evaluate import make_envs
from align.heldout import EVAL_SEED_OFFSET, heldout_tasks, take_by_grade, task_key, training_prompts
from envs.base import Environment, Task, task_source
from envs.registry import make_env


def _opening(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages before the first assistant turn: what the policy was prompted with."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:first]


def trained_prompt_keys(loaded: LoadedRecipe, envs: dict[str, Environment]) -> set[str]:
    """Prompt keys of the rows or tasks a stage trains on, read through the loaders the drivers use."""
    r = loaded.recipe
    if r.job == "rl":
        # The driver's own environments: built with each entry's params (align/algorithms/rl/driver.py).
        return {task_key(envs[s.name], t) for s in r.envs for t in load_tasks(s, make_env(s.name, s.params), s.num_train, r.seed, "train")}
    kind = "sft" if r.job == "sft" else "preference"
    rows = load_splits(r.data, kind, r.seed).train
    return {prompt_key(_opening(row["messages"]) if kind == "sft" else row["prompt"]) for row in rows}


def test_heldout_tasks_are_deterministic_and_skip_excluded_prompts() -> None:
    envs = make_envs(["math", "tool_use"])
    counts = {"math": 12, "tool_use": 5}
    first = heldout_tasks(envs, counts, set(), seed=3)
    assert [t.id for t in first] == [t.id for t in heldout_tasks(envs, counts, set(), seed=3)]
    assert [sum(t.env == n for t in first) for n in counts] == [12, 5]
    assert [t.id for t in heldout_tasks(envs, counts, set(), seed=4)] != [t.id for t in first]
    banned = {task_key(envs[t.env], t) for t in first[:4]}
    again = heldout_tasks(envs, counts, banned, seed=3)
    assert not {task_key(envs[t.env], t) for t in again} & banned
    assert sum(t.env == "math" for t in again) == 12  # refilled from the same stream's later candidates


def test_no_heldout_task_is_trained_on_in_the_tiny_pipeline() -> None:
    r = load_recipe("tiny").recipe
    assert isinstance(r, PipelineRecipe)
    stages, _ = load_stages(r)
    assert [s.recipe.job for s in stages] == ["sft", "rm", "dpo", "rl"]
    envs = make_envs(list(r.eval.envs))
    trained = {s.recipe.job: trained_prompt_keys(s, envs) for s in stages}
    assert all(len(keys) > 1000 for keys in trained.values()), {k: len(v) for k, v in trained.items()}
    # What the report evaluates every stage on (align.report.evaluate_stages, align eval on this recipe).
    heldout = heldout_tasks(envs, dict(r.eval.envs), training_prompts(envs, stages), r.seed)
    assert set(t.env for t in heldout) == set(r.eval.envs) and len(heldout) >= 0.75 * sum(r.eval.envs.values())
    keys = {task_key(envs[t.env], t) for t in heldout}
    assert len(keys) == len(heldout)
    overlap = {job: len(keys & trained_keys) for job, trained_keys in trained.items()}
    assert overlap == {"sft": 0, "rm": 0, "dpo": 0, "rl": 0}
    # Without the exclude set the same stream does hit training prompts: the check above has teeth.
    unfiltered = heldout_tasks(envs, dict(r.eval.envs), set(), r.seed)
    assert any(task_key(envs[t.env], t) in trained["sft"] for t in unfiltered)


class _RepetitiveMath:
    """A math environment whose generator has only 4 distinct prompts: what made a new environment
    lose its whole held-out set to the overlap with training, silently."""

    @staticmethod
    def make(monkeypatch):
        from envs.math.env import MathEnv
        from envs.registry import ENVS, register_env

        class RepetitiveMath(MathEnv):
            name = "repetitive_math"

            def generate(self, n, seed):
                base = super().generate(4, 0)
                return [type(t)(**{**t.__dict__, "id": f"rep-{seed}-{i}", "env": self.name}) for i, t in enumerate(base * (n // 4 + 1))][:n]

        monkeypatch.setattr(ENVS, "_explicit", {})
        register_env(RepetitiveMath)
        return RepetitiveMath


def test_an_rl_stage_with_env_params_excludes_what_its_own_generator_draws() -> None:
    """An RL stage whose params change what the generator draws (here math's grade 4 only) must
    have those tasks excluded, not the ones the default params would draw."""
    stage = load_recipe("nano3-multienv-tiny", ["envs.0.num_train=300", "envs.0.params.grade_weights={4: 1}"])
    envs = make_envs(["math"])
    excluded = training_prompts(envs, [stage])
    own = {task_key(envs["math"], t) for t in task_source(make_env("math", {"grade_weights": {4: 1}})).generate(300, stage.recipe.seed)}
    assert {t.meta["grade"] for t in task_source(make_env("math", stage.recipe.envs[0].params)).generate(50, 0)} == {4}
    assert own <= excluded
    default = {task_key(envs["math"], t) for t in task_source(envs["math"]).generate(300, stage.recipe.seed)}
    assert not default <= excluded  # the default draw (grades 1-4) is not what this stage trains on


def test_dropped_overlapping_eval_items_are_printed_per_environment(monkeypatch, capsys) -> None:
    from align.config.schema import GeneratedData
    from align.data.generated import generated_rows

    _RepetitiveMath.make(monkeypatch)
    train, evals = generated_rows(GeneratedData(envs={"math": 0.5, "repetitive_math": 0.5}, num_train=40, num_eval=12), "sft")
    out = capsys.readouterr().out
    assert sum(r["env"] == "repetitive_math" for r in evals) == 0 and sum(r["env"] == "math" for r in evals) == 6
    assert "held-out sft eval rows, repetitive_math: 0 of 6 kept; 6 dropped because training has the same prompt (NONE left" in out
    assert "held-out sft eval rows, math" not in out  # nothing dropped there: nothing printed


def test_heldout_tasks_print_an_environment_left_short(monkeypatch, capsys) -> None:
    from envs.registry import make_env

    _RepetitiveMath.make(monkeypatch)
    envs = {"math": make_env("math"), "repetitive_math": make_env("repetitive_math")}
    trained = {task_key(envs["repetitive_math"], t) for t in envs["repetitive_math"].generate(4, 0)}
    tasks = heldout_tasks(envs, {"math": 5, "repetitive_math": 6}, trained, seed=0)
    out = capsys.readouterr().out
    # Its 4 distinct prompts are all trained on: every candidate is dropped, and that is said.
    assert [sum(t.env == n for t in tasks) for n in ("math", "repetitive_math")] == [5, 0]
    assert "held-out eval tasks, repetitive_math: 0 of 6 kept; 6 dropped because training has the same prompt (NONE left" in out
    assert "eval tasks, math:" not in out


def test_the_report_flags_an_environment_with_fewer_heldout_tasks_than_configured() -> None:
    from align.report import heldout_shortfall

    lines = heldout_shortfall({"math": 16, "code": 2}, {"math": 16, "code": 16, "tool_use": 8})
    assert lines == [
        "**Held-out set short:** code has 2 of its 16 configured tasks (the rest repeat training prompts); its numbers rest on fewer samples.",
        "**Held-out set short:** tool_use has 0 of its 8 configured tasks (the rest repeat training prompts); its numbers rest on "
        "fewer samples, and it is missing from the tables.",
    ]


def test_no_prompt_is_held_out_twice() -> None:
    """The code generator repeats prompts: the selector keeps the first of each and draws on."""
    envs = make_envs(["code"])
    drawn = [task_key(envs["code"], t) for t in task_source(envs["code"]).generate(150, EVAL_SEED_OFFSET + 0)]
    assert len(set(drawn)) < len(drawn)  # what a selector without the dedup would have scored twice
    keys = [task_key(envs["code"], t) for t in heldout_tasks(envs, {"code": 150}, set(), seed=0)]
    assert len(keys) == 150 and len(set(keys)) == 150


def _graded(name: str, grade: int | None) -> Task:
    return Task(id=name, env="e", prompt=[{"role": "user", "content": name}], meta={} if grade is None else {"grade": grade})


def test_take_by_grade_follows_the_generators_grade_mix_and_fills_a_short_grade() -> None:
    # The generator drew grades 1:2:3 as 4:4:2, so 5 tasks get quotas 2, 2 and 1.
    drawn = [_graded(f"d{i}", g) for i, g in enumerate([1, 1, 1, 1, 2, 2, 2, 2, 3, 3])]
    fresh = [_graded("3a", 3), _graded("3b", 3), _graded("2a", 2), _graded("1a", 1), _graded("2b", 2), _graded("2c", 2), _graded("3c", 3)]
    # Grade 3 takes 3a, grade 2 takes 2a and 2b, grade 1 has only 1a of its 2: the spare place
    # goes to the first fresh task left over, 3b.
    assert [t.id for t in take_by_grade(drawn, fresh, 5)] == ["3a", "3b", "2a", "1a", "2b"]
    hard_first = [_graded("3a", 3), _graded("3b", 3), _graded("3c", 3), _graded("2a", 2), _graded("1a", 1), _graded("1b", 1), _graded("2b", 2)]
    # First come would take 3a, 3b, 3c, 2a, 1a: three of five from grade 3, whose share is a fifth.
    assert [t.id for t in take_by_grade(drawn, hard_first, 5)] == ["3a", "2a", "1a", "1b", "2b"]


def test_take_by_grade_without_grades_is_first_come_and_never_exceeds_what_is_fresh() -> None:
    plain = [_graded(f"t{i}", None) for i in range(6)]
    assert [t.id for t in take_by_grade(plain, plain[2:], 3)] == ["t2", "t3", "t4"]
    assert [t.id for t in take_by_grade(plain, plain[4:], 3)] == ["t4", "t5"]


def test_the_tiny_pipelines_heldout_sets_keep_every_grade() -> None:
    """instruction_following's 200 were 122 of grade 3 (of 3) with first-come selection: the easy
    grades' few distinct prompts are mostly trained on. Now each grade has about a third."""
    r = load_recipe("tiny").recipe
    stages, _ = load_stages(r)
    envs = make_envs(list(r.eval.envs))
    tasks = heldout_tasks(envs, dict(r.eval.envs), training_prompts(envs, stages), r.seed)
    for name in ("instruction_following", "tool_use", "code"):
        grades = Counter(t.meta["grade"] for t in tasks if t.env == name)
        assert sum(grades.values()) == 200 and set(grades) == {1, 2, 3}, (name, grades)
        assert min(grades.values()) >= 55, (name, grades)  # a third of 200 is 67; the quotas follow random draws
