"""The curriculum by pass rate (``grpo.curriculum``): dropping solved tasks, weights, metrics, resume."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from align.algorithms.rl.curriculum import Curriculum
from align.algorithms.rl.tasks import TaskMixer
from align.config.schema import CurriculumConfig
from align.reasoning import ReasoningMode
from envs.base import Task
from rollout.types import Trajectory


def _tasks(env: str, n: int) -> list[Task]:
    return [Task(id=f"{env}-{i}", env=env, prompt=[{"role": "user", "content": str(i)}], answer=i) for i in range(n)]


def _group(task: Task, correct: list[bool | None]) -> list[Trajectory]:
    return [
        Trajectory(task=task, env=task.env, mode=ReasoningMode(), prompt_ids=[1], completion_ids=[2], loss_mask=[1],
                   rollout_logprobs=[-1.0], messages=[], completion="", reward=float(bool(c)), correct=c, info={})  # fmt: skip
        for c in correct
    ]


def _mixer(cfg: CurriculumConfig, n: int = 8) -> TaskMixer:
    return TaskMixer({"math": _tasks("math", n), "code": _tasks("code", n)}, {"math": 1.0, "code": 1.0}, seed=3, curriculum=cfg)


def test_off_by_default_and_the_streams_are_unchanged() -> None:
    plain = TaskMixer({"math": _tasks("math", 8)}, {"math": 1.0}, seed=3)
    off = TaskMixer({"math": _tasks("math", 8)}, {"math": 1.0}, seed=3, curriculum=CurriculumConfig())
    assert off.curriculum is None and [t.id for t in off.next(12)] == [t.id for t in plain.next(12)]
    assert off.observe([_group(_tasks("math", 1)[0], [True] * 4)]) == {} and off.state_dict() == {"position": {"math": 12}}


def test_all_solved_tasks_leave_the_pool() -> None:
    mixer = _mixer(CurriculumConfig(enabled=True))
    math_tasks = mixer.tasks["math"]
    solved = {t.id for t in math_tasks[:5]}
    groups = [_group(t, [True] * 4) for t in math_tasks[:5]] + [_group(math_tasks[5], [True, True, True, False])]
    metrics = mixer.observe(groups)
    drawn = Counter(t.id for _ in range(50) for t in mixer.next(4) if t.env == "math")
    assert not solved & set(drawn), "a task whose group was all correct was sampled again"
    assert set(drawn) == {t.id for t in math_tasks[5:]}  # 3 left in the pool, 2 drawn per step
    assert metrics["math/tasks_solved"] == 5 and metrics["math/tasks_active"] == 3 and metrics["math/tasks_seen"] == 6
    assert metrics["code/tasks_solved"] == 0 and metrics["code/tasks_active"] == 8


def test_solved_streak_and_solved_weight() -> None:
    cur = Curriculum(CurriculumConfig(enabled=True, solved_streak=2), seed=0)
    task = _tasks("math", 1)[0]
    cur.observe([_group(task, [True] * 4)])
    assert not cur.solved("math", task.id) and cur.weight("math", task.id) == 1.0
    cur.observe([_group(task, [True] * 3 + [False])])  # the streak starts over
    cur.observe([_group(task, [True] * 4)])
    assert not cur.solved("math", task.id)
    cur.observe([_group(task, [True] * 4)])
    assert cur.solved("math", task.id) and cur.weight("math", task.id) == 0.0
    kept = Curriculum(CurriculumConfig(enabled=True, solved_weight=0.1), seed=0)
    kept.observe([_group(task, [True] * 4)])
    assert kept.weight("math", task.id) == pytest.approx(0.1)
    none = Curriculum(CurriculumConfig(enabled=True), seed=0)
    none.observe([_group(task, [None] * 4)])  # no verdicts: nothing measured
    assert none.stats == {}


@pytest.mark.parametrize("weighting", ["learnability", "easy_first"])
def test_draws_follow_the_pass_rate_weights(weighting: str) -> None:
    cfg = CurriculumConfig(enabled=True, weighting=weighting, min_weight=0.05)
    cur = Curriculum(cfg, seed=1)
    tasks = _tasks("math", 5)
    for task, wins in zip(tasks[:4], (0, 1, 2, 3)):  # pass rates 0, .25, .5, .75; tasks[4] unseen (p = 0.5)
        cur.observe([_group(task, [True] * wins + [False] * (4 - wins))])
    p = [0.0, 0.25, 0.5, 0.75, 0.5]
    expected = [(q * (1 - q) if weighting == "learnability" else q) + 0.05 for q in p]
    assert [cur.weight("math", t.id) for t in tasks] == pytest.approx(expected)
    n = 6000
    counts = Counter(cur.draw("math", tasks, 1, position)[0].id for position in range(n))
    total = sum(expected)
    for task, w in zip(tasks, expected):
        share = w / total
        sd = math.sqrt(share * (1 - share) / n)
        assert abs(counts[task.id] / n - share) < 4 * sd, (weighting, task.id, counts)


def test_a_draw_has_distinct_tasks_and_an_all_solved_environment_falls_back_to_uniform() -> None:
    cur = Curriculum(CurriculumConfig(enabled=True), seed=0)
    tasks = _tasks("math", 4)
    assert len({t.id for t in cur.draw("math", tasks, 4, 0)}) == 4
    cur.observe([_group(t, [True] * 2) for t in tasks])
    drawn = [t.id for position in range(40) for t in cur.draw("math", tasks, 2, position)]
    assert set(drawn) == {t.id for t in tasks}


def test_pass_rate_histogram_per_environment() -> None:
    cur = Curriculum(CurriculumConfig(enabled=True, histogram_bins=4), seed=0)
    tasks = _tasks("math", 6)
    for task, wins in zip(tasks, (0, 0, 1, 2, 4)):  # of 4: 0, 0, .25, .5, 1.0; tasks[5] unseen
        cur.observe([_group(task, [True] * wins + [False] * (4 - wins))])
    m = cur.metrics({"math": tasks, "code": _tasks("code", 2)})
    hist = {k.split("/")[-1]: v for k, v in m.items() if k.startswith("math/pass_rate_hist/")}
    assert hist == {"0.00-0.25": 2 / 5, "0.25-0.50": 1 / 5, "0.50-0.75": 1 / 5, "0.75-1.00": 1 / 5}
    assert m["code/tasks_seen"] == 0 and m["code/pass_rate_hist/0.00-0.25"] == 0.0


def test_curriculum_state_survives_a_checkpoint() -> None:
    cfg = CurriculumConfig(enabled=True, weighting="learnability")
    a = _mixer(cfg)
    for step in range(3):
        tasks = a.next(4)
        a.observe([_group(t, [True] * ((i + step) % 5) + [False] * (4 - (i + step) % 5)) for i, t in enumerate(tasks)])
    state = json.loads(json.dumps(a.state_dict()))  # as the checkpoint's state.json holds it
    assert set(state) == {"position", "curriculum"} and state["position"] == {"math": 6, "code": 6}
    b = _mixer(cfg)
    b.load_state_dict(state)
    positions_only = _mixer(cfg)  # what a checkpoint without the pass rates would resume to
    positions_only.load_state_dict({"position": state["position"]})
    assert b.curriculum is not None and a.curriculum is not None and b.curriculum.stats == a.curriculum.stats
    expected = [[t.id for t in a.next(4)] for _ in range(5)]
    assert [[t.id for t in b.next(4)] for _ in range(5)] == expected
    assert [[t.id for t in positions_only.next(4)] for _ in range(5)] != expected


def test_an_unseen_task_takes_the_pass_rate_of_its_grade() -> None:
    cfg = CurriculumConfig(enabled=True, weighting="learnability", min_weight=0.01, unseen_prior_key="grade")
    cur = Curriculum(cfg, seed=2)
    tasks = [Task(id=f"m{g}-{i}", env="math", prompt=[], answer=0, meta={"grade": g}) for g in (1, 2, 3) for i in range(20)]
    by_grade = {g: [t for t in tasks if t.meta["grade"] == g] for g in (1, 2, 3)}
    for t in by_grade[1][:3]:  # grade 1 failed every time, grade 2 half the time; grade 3 never seen
        cur.observe([_group(t, [False] * 4)])
    for t in by_grade[2][:3]:
        cur.observe([_group(t, [True, True, False, False])])
    # one pseudo-task at unseen_pass_rate (0.5) beside the seen ones: grade 1 (0+0+0+0.5)/4
    assert cur.priors("math", tasks) == pytest.approx({1: 0.125, 2: 0.5, 3: 0.5})
    weights = dict(zip((t.id for t in tasks), cur._weights("math", tasks)))
    unseen1, unseen2 = by_grade[1][5], by_grade[2][5]
    assert weights[unseen1.id] == pytest.approx(0.125 * 0.875 + 0.01) and weights[unseen2.id] == pytest.approx(0.25 + 0.01)
    drawn = Counter(t.meta["grade"] for position in range(300) for t in cur.draw("math", tasks, 4, position))
    # weights per task: grade 1 ~0.12, grades 2 and 3 ~0.26: grade 1 gets under a fifth of the draws
    assert drawn[1] < 0.2 * sum(drawn.values()) and min(drawn[2], drawn[3]) > drawn[1] * 1.5, drawn
    metrics = cur.metrics({"math": tasks})
    assert metrics["math/pass_rate_by_grade/1"] == pytest.approx(0.125) and metrics["math/pass_rate_by_grade/2"] == 0.5
    plain = Curriculum(CurriculumConfig(enabled=True, weighting="learnability"), seed=2)
    plain.stats = cur.stats
    plain_weights = dict(zip((t.id for t in tasks), plain._weights("math", tasks)))
    assert plain.priors("math", tasks) == {} and plain_weights[unseen1.id] == plain_weights[unseen2.id] == pytest.approx(0.26)
