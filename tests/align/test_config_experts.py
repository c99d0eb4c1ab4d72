"""align/config/experts.py: a tiny MoE policy's settings are checked when the recipe loads."""

from __future__ import annotations

import pytest

from align.cli import main
from align.config import RecipeError, load_recipe


def test_a_moe_pattern_with_its_expert_settings_loads() -> None:
    r = load_recipe("tiny-sft", ["model.tiny.layers_block_type=MEM*E*", "model.tiny.n_routed_experts=8", "model.tiny.n_group=2",
                                 "model.tiny.topk_group=2", "model.tiny.num_experts_per_tok=3"])  # fmt: skip
    assert r.recipe.model.tiny.layers_block_type.count("E") == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.tiny.layers_block_type=MX*"], r"unknown layer kinds \['X'\]; use M = Mamba2"),
        (["model.tiny.num_experts_per_tok=6"], r"num_experts_per_tok \(6\) exceeds the experts a token can reach"),
        (["model.tiny.n_routed_experts=6", "model.tiny.n_group=4"], r"n_routed_experts \(6\) must be a multiple of n_group \(4\)"),
        (["model.tiny.n_group=2", "model.tiny.topk_group=3"], r"topk_group \(3\) cannot exceed n_group \(2\)"),
        (["model.tiny.n_group=4"], r"each group needs 2 or more experts"),
    ],
)
def test_inconsistent_expert_settings_name_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe("tiny-sft", ["model.tiny.layers_block_type=ME*ME*", *overrides])


def test_dense_pattern_ignores_expert_settings() -> None:
    assert load_recipe("tiny-sft", ["model.tiny.num_experts_per_tok=9"]).recipe.model.tiny.num_experts_per_tok == 9


def test_cli_exits_2_on_bad_expert_settings(capsys) -> None:
    assert main(["sft", "--recipe", "tiny-sft", "model.tiny.layers_block_type=ME*", "model.tiny.num_experts_per_tok=5"]) == 2
    assert "model.tiny" in capsys.readouterr().err
