"""``rm.objective: genrm``: judgement splits from preference splits (both orders, file positions kept), and the RL stage after the SFT."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from align.algorithms.common import JobError
from align.algorithms.genrm import judgement_splits, rl_stage
from align.config import load_recipe
from align.data import RowSplits
from envs.judge import JudgeEnv
from envs.public_data import load_env_tasks


def _pair(i: int) -> dict:
    return {"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}]}  # fmt: skip


def test_judgement_splits_double_rows_and_refs() -> None:
    pairs = RowSplits([_pair(0), _pair(1)], [_pair(2)], {"train_rows": 2, "eval_rows": 1}, train_refs=["r0", "r1"], eval_refs=["r2"])  # type: ignore[list-item]
    rows = judgement_splits(pairs)
    assert len(rows.train) == 4 and len(rows.eval) == 2
    assert rows.train_refs == ["r0", "r0", "r1", "r1"] and rows.eval_refs == ["r2", "r2"]
    assert [r["order"] for r in rows.train] == ["chosen_a", "chosen_b"] * 2
    assert rows.stats["judgement_train_rows"] == 4 and rows.stats["train_rows"] == 2
    generated = judgement_splits(RowSplits([_pair(0)], [], {}))
    assert generated.train_refs is None and generated.eval == []


def test_recipe_selects_the_genrm_objective() -> None:
    r = load_recipe("tiny-genrm").recipe
    assert r.rm.objective == "genrm" and r.data.generated.envs == {"chat": 1.0}
    assert r.data.reasoning.no_think_fraction == 0.0  # the judge's reasoning is its target
    assert r.rm.genrm.train_pair_kinds == {"padded": 0.25}


def test_rl_stage_trains_the_sft_judge_on_the_jobs_pairs_in_both_orders(tmp_path: Path) -> None:
    loaded = load_recipe("tiny-genrm", [f"output_dir={tmp_path}"])
    rl = rl_stage(loaded, [_pair(0), _pair(1)])
    assert rl is not None and rl.recipe.job == "rl"
    assert rl.recipe.init_from == str(tmp_path / "sft" / "final") and rl.recipe.output_dir == str(tmp_path / "rl")
    spec = rl.recipe.envs[0]  # type: ignore[attr-defined]
    tasks, skipped = load_env_tasks("judge", spec.data_path)
    assert skipped == 0 and [(t.meta["order"], t.answer) for t in tasks] == [("chosen_a", 1), ("chosen_b", -1)] * 2
    assert "| q1" in tasks[2].prompt[0]["content"]
    env = JudgeEnv()
    for t in tasks:  # each task's own target agrees with its label; the flipped one does not
        assert asyncio.run(env.step(t, [], env.demonstrate(t)[0]["content"])).correct is True
        assert asyncio.run(env.step(t, [], env.corrupt(t, random.Random(0))[0]["content"])).correct is False
    assert rl_stage(load_recipe("tiny-genrm", [f"output_dir={tmp_path}", "rm.genrm.rl_recipe=null"]), [_pair(0)]) is None


def test_rl_stage_needs_a_judge_recipe(tmp_path: Path) -> None:
    loaded = load_recipe("tiny-genrm", [f"output_dir={tmp_path}", "rm.genrm.rl_recipe=tiny-rlhf"])
    with pytest.raises(JobError, match="one environment, judge"):
        rl_stage(loaded, [_pair(0)])
