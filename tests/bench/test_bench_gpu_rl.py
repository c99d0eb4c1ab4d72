"""bench_gpu_rl's layouts: the recipe it writes for N GPUs passes align's own recipe checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import bench_gpu_rl as bench  # noqa: E402

from align.config import load_recipe  # noqa: E402


@pytest.mark.parametrize(
    ("placement", "gpus", "zero", "learners", "gpu_shares", "prompts"),
    [
        ("colocated", 1, 0, 1, (0.5, 0.4), 8),
        ("colocated", 8, 3, 8, (0.5, 0.4), 64),  # a learner and an engine on each GPU
        ("separate", 2, 0, 1, (1.0, 1.0), 8),
        ("separate", 8, 3, 4, (1.0, 1.0), 32),  # 4 learners, 4 engines
    ],
)  # fmt: skip
def test_node_layouts(tmp_path, placement, gpus, zero, learners, gpu_shares, prompts) -> None:
    s = bench.Settings(placement=placement, gpus=gpus, zero=zero)
    path = bench.align_recipe(tmp_path / "ckpt", "llama-8b", s, tmp_path / "run")
    r = load_recipe(str(path), [], job="rl").recipe
    assert (r.cluster.num_learners, r.cluster.num_rollout_engines) == (learners, learners)
    assert (r.cluster.gpus_per_learner, r.cluster.gpus_per_rollout_engine) == gpu_shares
    assert r.learner.zero_stage == zero
    assert r.grpo.prompts_per_step == prompts == s.prompts_per_step  # the same prompts per engine at every size


def _entry(rate: float) -> dict:
    return {"runs": {"align": [{"summary": {"tokens_per_s_per_gpu": rate}}], "trl": [{"summary": {"tokens_per_s_per_gpu": rate / 2}}]}}


def test_scaling_efficiency_by_hand() -> None:
    entries = {"llama-8b@2": _entry(1000.0), "llama-8b@4": _entry(950.0), "llama-8b@8": _entry(850.0)}
    got = {line["side"]: line["efficiency"] for line in bench.scaling(entries, [2, 4, 8])}
    assert got == pytest.approx({"align": 0.85, "trl": 0.85})
    assert bench.scaling({"llama-8b": _entry(1.0)}, [8]) == []  # one size: nothing to compare


def test_side_modifiers_reach_the_recipe(tmp_path) -> None:
    s = bench.side_settings(bench.Settings(profile_step=3), "align-compile-mb32")
    r = load_recipe(str(bench.align_recipe(tmp_path / "ckpt", "llama-1b", s, tmp_path / "run")), [], job="rl").recipe
    assert (r.learner.compile, r.learner.micro_batch_size_per_device) == (True, 32)
    assert r.grpo.max_seq_logprob_error is None  # no oldpass modifier
    assert r.learner.liger_kernel == "auto"  # the product's default path unless a side says otherwise
    liger = bench.side_settings(bench.Settings(), "align-liger-mb32")
    r2 = load_recipe(str(bench.align_recipe(tmp_path / "ckpt", "llama-1b", liger, tmp_path / "run2")), [], job="rl").recipe
    assert (r2.learner.liger_kernel, r2.learner.micro_batch_size_per_device) == (True, 32)
    assert bench.side_settings(bench.Settings(), "align-noliger-mb32").liger == "false"
    assert r.learner.profile is not None and (r.learner.profile.steps, r.learner.profile.dir) == ([3], str(tmp_path / "run" / "profile"))
    assert bench.side_settings(bench.Settings(), "align-oldpass").old_pass
    assert bench.side_settings(bench.Settings(), "align-bucket2048-mb16") == bench.Settings(bucket_mb=2048, micro_batch=16)
    big = bench.side_settings(bench.Settings(), "align-bucket2048")
    r3 = load_recipe(str(bench.align_recipe(tmp_path / "ckpt", "llama-1b", big, tmp_path / "run3")), [], job="rl").recipe
    assert (r.rollout.weight_sync_bucket_mb, r3.rollout.weight_sync_bucket_mb) == (512, 2048)
    assert bench.side_settings(bench.Settings(), "trl") == bench.Settings()
    with pytest.raises(ValueError, match="unknown modifier 'fast'"):
        bench.side_settings(bench.Settings(), "align-fast")


def test_the_profiled_step_is_left_out_of_the_medians() -> None:
    res = {"side": "align", "step_times_s": [9.0, 1.0, 5.0, 1.2], "time_learner_s": [5.0, 0.5, 3.0, 0.7]}
    got = bench.summarize(res, bench.Settings(warmup=1, profile_step=3), 40.0, 1000, None)
    assert (got["step_s"], got["learner_s"]) == (pytest.approx(1.1), pytest.approx(0.6))  # steps 2 and 4
    plain = bench.summarize(res, bench.Settings(warmup=1), 40.0, 1000, None)
    assert plain["step_s"] == 1.2  # median of steps 2-4


def test_sync_over_floor_per_align_side() -> None:
    entry = {"sync_floor": {"floor_s": 0.02},
             "runs": {"align-liger-mb64": [{"summary": {"sync_s": 0.05}}, {"summary": {"sync_s": 0.07}}],
                      "trl": [{"summary": {"step_s": 3.0}}]}}  # fmt: skip
    assert bench.sync_over_floor(entry) == pytest.approx({"align-liger-mb64": 3.0})  # the median sync, 0.06 s, over 0.02 s
    assert bench.sync_over_floor({"runs": entry["runs"]}) == {}  # no floor measured


def test_sync_parts_line_splits_a_side_s_sync() -> None:
    parts = {"sync_tail_s": 0.004, "sync_state_dict_s": 0.001, "sync_pack_s": 0.003, "sync_wait_s": 0.02, "sync_engine_load_s": 0.014, "sync_push_s": 0.029}
    runs = [{"summary": {"sync_s": 0.036, **parts}}, {"summary": {"sync_s": 0.040, **parts}}]
    assert bench.sync_parts_line(runs) == ("sync parts (ms): tail 4.0, state_dict 1.0, pack 3.0, wait 20.0, engine_load 14.0; "
                                          "learners' push 29.0, outside it 9.0")  # fmt: skip
    assert "not cuda_ipc" in bench.sync_parts_line([{"summary": {"sync_s": 0.05}}])
    engine = {"sync_engine_quiesce_s": 0.001, "sync_engine_finish_s": 0.002, "sync_engine_span_s": 0.018}
    line = bench.sync_parts_line([{"summary": {"sync_s": 0.036, **parts, **engine}}])
    assert line.endswith("; engine idle between buckets 1.0, push outside the engines' span 11.0")  # 18 - 1 - 14 - 2; 29 - 18


def test_long_generations_can_skip_the_eval(tmp_path) -> None:
    s = bench.Settings(new_tokens=16384, num_eval=0)
    r = load_recipe(str(bench.align_recipe(tmp_path / "ckpt", "hybrid-1b", s, tmp_path / "run")), [], job="rl").recipe
    assert [e.num_eval for e in r.envs] == [0] and r.rollout.max_model_len == 256 + 16384
