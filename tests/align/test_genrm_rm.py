"""``rm.objective: genrm``: judgement splits from preference splits (both orders, file positions kept)."""

from __future__ import annotations

from align.algorithms.genrm import judgement_splits
from align.config import load_recipe
from align.data import RowSplits


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
