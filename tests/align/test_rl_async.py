"""Asynchronous GRPO (``grpo.mode: async``): the staleness gate, token versions, the prompt
stream's exact resume, the off-policy correction on stale trajectories, and the recipe checks."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from align.algorithms.rl.async_loop import may_start, token_versions
from align.algorithms.rl.batch import Scored, micro_batches, to_sequences
from align.algorithms.rl.objective import GRPOObjective, TokenLogprobs
from align.algorithms.rl.stream import PromptStream
from align.algorithms.rl.tasks import TaskMixer
from align.cli import main
from align.config import load_recipe
from align.config.loader import RecipeError
from align.config.schema import RLReasoningConfig
from align.reasoning import ReasoningMode
from envs.base import Task
from rollout.types import Trajectory


def _simulate(per_step: int, max_staleness: int, steps: int, seed: int, drop_share: float) -> tuple[int, int]:
    """The producer and learner of async_loop.py as discrete ticks, with random generation times
    (1-12 ticks, so later groups often finish first), dynamic-sampling drops and refills (at most
    3 x per_step groups a step), and an update of 3 ticks. Returns (oldest age trained, most groups
    ever in flight or queued); asserts every taken group's age."""
    rng = random.Random(seed)
    version = step = consumed = consumed_before = started = 0
    running: dict[int, tuple[int, int]] = {}  # index -> (start version, ticks left)
    kept = taken = update_left = 0
    oldest = most_open = 0
    while step < steps:
        while may_start(started, consumed_before, consumed, per_step, version, step, max_staleness):
            running[started] = (version, rng.randint(1, 12))
            started += 1
        most_open = max(most_open, started - consumed)
        running = {i: (v, t - 1) for i, (v, t) in running.items()}
        if update_left:
            update_left -= 1
            if not update_left:  # the new weights reach the engines
                version, step, consumed_before, kept, taken = step + 1, step + 1, consumed, 0, 0
            continue
        while kept < per_step and taken < 3 * per_step and consumed in running and running[consumed][1] <= 0:
            v, _ = running.pop(consumed)
            assert step - v <= max_staleness, f"group {consumed} trained {step - v} updates old at step {step}"
            oldest = max(oldest, step - v)
            consumed, taken = consumed + 1, taken + 1
            kept += rng.random() >= drop_share
        if kept >= per_step or taken >= 3 * per_step:
            update_left = 3
    return oldest, most_open


@pytest.mark.parametrize("max_staleness", [1, 2, 3])
@pytest.mark.parametrize("drop_share", [0.0, 0.4])
def test_gate_bounds_staleness_and_runs_ahead(max_staleness: int, drop_share: float) -> None:
    for seed in range(20):
        oldest, most_open = _simulate(per_step=4, max_staleness=max_staleness, steps=30, seed=seed, drop_share=drop_share)
        # The bound is used, not just respected: groups do run max_staleness updates behind.
        assert oldest == max_staleness
        assert most_open <= 4 * (max_staleness + 1)


def test_gate_counts() -> None:
    # Fresh engines (version == step), N = 1: two steps' worth of groups may be open.
    assert may_start(7, 0, 0, 4, 0, 0, 1) and not may_start(8, 0, 0, 4, 0, 0, 1)
    # During the update of step 0 (the learner moved on to step 1, engines still at 0): one step's worth.
    assert may_start(11, 8, 8, 4, 0, 1, 1) and not may_start(12, 8, 8, 4, 0, 1, 1)
    # Refills the current step takes beyond its 4 groups do not count as ahead of the next ones.
    assert may_start(9, 0, 6, 4, 0, 0, 1) and not may_start(10, 0, 6, 4, 0, 0, 1)


def _traj(completion: list[int], mask: list[int], logprobs: list[float], versions: list[int] | None = None, task_id: str = "t") -> Trajectory:
    return Trajectory(task=Task(task_id, "math", [{"role": "user", "content": "q"}]), env="math", mode=ReasoningMode(thinking=True),
                      prompt_ids=[0], completion_ids=completion, loss_mask=mask, rollout_logprobs=logprobs, messages=[], completion="",
                      reward=0.0, correct=None, info={}, weight_versions=versions)  # fmt: skip


def test_token_versions_of_sampled_tokens() -> None:
    # One version per completion token: forced / observation tokens (mask 0) are not sampled.
    assert token_versions(_traj([5, 6, 7, 8], [1, 0, 1, 1], [0.0] * 4, [3, 3, 4, 4]), fallback=0) == [3, 4, 4]
    # An engine that reports none: the version the group started on, for every sampled token.
    assert token_versions(_traj([5, 6, 7], [1, 1, 0], [0.0] * 3), fallback=2) == [2, 2]


def _stream(reasoning: RLReasoningConfig | None = None) -> PromptStream:
    tasks = {env: [Task(f"{env}-{i}", env, [{"role": "user", "content": str(i)}]) for i in range(n)] for env, n in (("math", 7), ("code", 5))}
    mixer = TaskMixer(tasks, {"math": 0.6, "code": 0.4}, seed=3)
    return PromptStream(mixer, block=4, reasoning=reasoning or RLReasoningConfig(), seed=3)


def test_prompt_stream_resumes_open_prompts_first_then_where_it_stood() -> None:
    """A checkpoint taken with prompts in flight or queued: the resumed stream hands those out again
    (same ids, same tasks, same modes) before anything new, then exactly what the original drew."""
    original = _stream()
    handed = [original.next() for _ in range(9)]
    for p in handed[:5]:  # steps took these; 5..8 are in flight or queued
        original.consumed(p.index)
    state = original.state_dict()
    assert [i for i, _, _ in state["stream"]["open"]] == [5, 6, 7, 8]
    after = [original.next() for _ in range(6)]

    resumed = _stream()
    resumed.load_state_dict(state)
    again = [resumed.next() for _ in range(4 + 6)]
    assert [(p.index, p.task.id, p.mode) for p in again] == [(p.index, p.task.id, p.mode) for p in handed[5:] + after]
    assert [p.index for p in again] == list(range(5, 15))  # ids stay contiguous: nothing skipped, nothing twice
    # Environments mix by weight within each block of 4, as sync steps do.
    assert sorted(p.task.env for p in handed[:4]) == ["code", "code", "math", "math"]


def test_prompt_stream_state_before_any_resume_replay_is_taken_keeps_it() -> None:
    """A second checkpoint before the resumed run handed its open prompts out again keeps them open."""
    original = _stream()
    for _ in range(6):
        original.next()
    state = original.state_dict()
    resumed = _stream()
    resumed.load_state_dict(state)
    assert resumed.state_dict()["stream"] == state["stream"]


class _TableModel(nn.Module):
    """Logits are a learnable row per input token: log-probs of the next token are set by hand."""

    def __init__(self, probs: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(probs).log())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])


def test_off_policy_correction_on_stale_tokens_by_hand() -> None:
    """A group whose tokens came from older weights goes through the same path as sync: batch from
    the trajectories' behaviour log-probs, the learner's old log-probs, then GRPOObjective.

    Completion 1, 2 after prompt 0. The learner now has p(1|0) = 0.5, p(2|1) = 0.6. The stale
    behaviour policy sampled them with p = 0.25 and 0.75. TIS weights: min(0.5 / 0.25, 1.5) = 1.5
    (capped) and 0.6 / 0.75 = 0.8. With advantage 1 and ratio 1 (first epoch), the summed token loss
    is -(1.5 + 0.8) = -2.3; the weights are constants, so the gradient on row 0's logits is
    -1.5 * (onehot(1) - p(.|0)) = [0.375, -0.75, 0.375], and on row 1's -0.8 * (onehot(2) - p(.|1)).
    """
    model = _TableModel([[0.25, 0.5, 0.25], [0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]])
    stale = _traj([1, 2], [1, 1], [math.log(0.25), math.log(0.75)], versions=[3, 4])
    fresh = _traj([1, 2], [1, 1], [math.log(0.5), math.log(0.6)], versions=[5, 5])
    group = Scored([stale, fresh], rewards=[1.0, 0.0], advantages=[1.0, 0.0], keep=[1, 1])
    (mbs,) = micro_batches(to_sequences([group]), world_size=1, accumulation=1, pad_id=0, aggregation="token")
    (mb,) = mbs
    with torch.no_grad():
        mb["old_logprobs"] = TokenLogprobs(1.0)(model, mb)
    row = mb["sequence_index"].tolist().index(0)  # the stale trajectory's row after the length sort
    assert torch.allclose(mb["old_logprobs"][row], torch.tensor([math.log(0.5), math.log(0.6)]), atol=1e-6)
    loss, stats = GRPOObjective(clip_low=0.2, clip_high=0.28, aggregation="token", tis_cap=1.5)(model, mb)
    assert float(loss.detach()) == pytest.approx(-2.3, abs=1e-5)  # the fresh row has advantage 0
    assert stats["tokens"] == 4.0 and stats["clip_frac_sum"] == 0.0
    loss.backward()
    grad = model.table.grad
    assert torch.allclose(grad[0], torch.tensor([0.375, -0.75, 0.375]), atol=1e-5)
    assert torch.allclose(grad[1], -0.8 * (torch.tensor([0.0, 0.0, 1.0]) - torch.tensor([0.2, 0.2, 0.6])), atol=1e-5)


def test_async_with_colocated_engines_is_refused() -> None:
    with pytest.raises(RecipeError, match=r"grpo.mode=async needs rollout engines apart.*cluster.gpus_per_rollout_engine=0.4"):
        load_recipe("nano3-multienv-tiny", ["grpo.mode=async", "cluster.gpus_per_learner=0.5", "cluster.gpus_per_rollout_engine=0.4"])
    with pytest.raises(RecipeError, match=r"rollout.weight_sync=cuda_ipc"):
        load_recipe("nano3-multienv-tiny", ["grpo.mode=async", "rollout.weight_sync=cuda_ipc"])
    with pytest.raises(RecipeError, match=r"grpo.off_policy_overlap=false"):
        load_recipe("nano3-multienv-tiny", ["grpo.mode=async", "grpo.off_policy_overlap=true"])
    # CPU actors, and engines on GPUs of their own, are what async is for.
    cpu = load_recipe("nano3-multienv-tiny", ["grpo.mode=async", "grpo.max_staleness=2"]).recipe
    assert cpu.grpo.mode == "async" and cpu.grpo.max_staleness == 2  # type: ignore[attr-defined]
    gpus = load_recipe("nano3-multienv-tiny", ["grpo.mode=async", "cluster.gpus_per_learner=1", "cluster.gpus_per_rollout_engine=1"]).recipe
    assert gpus.grpo.mode == "async"  # type: ignore[attr-defined]
    with pytest.raises(RecipeError, match=r"max_staleness"):
        load_recipe("nano3-multienv-tiny", ["grpo.mode=async", "grpo.max_staleness=0"])


def test_cli_async_colocated_exits_2(tmp_path, capsys) -> None:
    code = main(["rl", "--recipe", "nano3-multienv-tiny", "grpo.mode=async", "cluster.gpus_per_rollout_engine=0.5", f"output_dir={tmp_path / 'run'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "grpo.mode" in err and "cluster.gpus_per_rollout_engine" in err and not (tmp_path / "run").exists()
