"""``rollout.max_num_seqs`` resolved for an RL job's engines (``engine_max_num_seqs``)."""

from __future__ import annotations

import pytest

from align.algorithms.rl.schedule import engine_max_num_seqs
from align.config import load_recipe


def _resolved(*overrides: str) -> int | None:
    return engine_max_num_seqs(load_recipe("nano3-multienv-tiny", list(overrides), job="rl").recipe).max_num_seqs


GPU = ("cluster.gpus_per_learner=0.5", "cluster.gpus_per_rollout_engine=0.4")


@pytest.mark.parametrize(
    ("overrides", "want"),
    [
        ((), None),  # CPU engines: vLLM's default
        (GPU + ("grpo.prompts_per_step=8", "grpo.generations_per_prompt=4"), 32),  # one step's sequences
        (GPU + ("grpo.prompts_per_step=64", "grpo.generations_per_prompt=8"), 256),  # capped at vLLM's default
        (GPU + ("grpo.prompts_per_step=8", "grpo.generations_per_prompt=4", "rollout.max_num_seqs=5"), 5),  # the recipe's value wins
        (("cluster.gpus_per_learner=1", "cluster.gpus_per_rollout_engine=1", "cluster.num_rollout_engines=2", "grpo.mode=async",
          "grpo.max_staleness=2", "grpo.prompts_per_step=6", "grpo.generations_per_prompt=4", "learner.micro_batch_size_per_device=8"),
         36),  # 6 x 4 x (1 + 2) over 2 engines
    ],
)  # fmt: skip
def test_engine_max_num_seqs(overrides: tuple[str, ...], want: int | None) -> None:
    assert _resolved(*overrides) == want


def test_max_num_seqs_must_be_positive() -> None:
    with pytest.raises(Exception, match="max_num_seqs"):
        load_recipe("nano3-multienv-tiny", ["rollout.max_num_seqs=0"], job="rl")
