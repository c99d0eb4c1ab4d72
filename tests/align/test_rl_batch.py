"""RL batch building: advantages, dynamic sampling, overlong filtering, micro-batches, task mixing."""

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from align.algorithms.rl.batch import Scored, combine_updates, fill, finalize, mask_mismatched, micro_batches, select_groups, to_sequences, update_batches
from align.algorithms.rl.tasks import TaskMixer, assign_mode
from align.config.schema import GRPOSettings, RLReasoningConfig
from align.errors import AlignError
from align.losses import IGNORE, seq_logprob_error
from envs.base import Task


@dataclass
class FakeTrajectory:
    """The fields of rollout.types.Trajectory that batch building reads."""

    prompt_ids: list[int]
    completion_ids: list[int]
    loss_mask: list[int]
    rollout_logprobs: list[float]
    truncated: bool = False
    info: dict = field(default_factory=dict)
    routed_experts: np.ndarray | None = None
    task: Task = field(default_factory=lambda: Task(id="t0", env="math", prompt=[]))
    env: str = "math"


def _traj(n_prompt: int, n_completion: int, truncated: bool = False, observation_at: int | None = None) -> FakeTrajectory:
    mask = [1] * n_completion
    if observation_at is not None:
        mask[observation_at] = 0
    return FakeTrajectory(list(range(10, 10 + n_prompt)), list(range(50, 50 + n_completion)), mask,
                          [-0.5 if m else 0.0 for m in mask], truncated)  # fmt: skip


def _greedy(t: FakeTrajectory) -> FakeTrajectory:
    t.info["greedy"] = True  # as rollout.collect marks the episode it plays at temperature 0
    return t


def test_leave_one_out_advantages_and_overlong_filtering() -> None:
    g = finalize(Scored([_traj(3, 4), _traj(3, 4), _traj(3, 4, truncated=True)], [1.0, 0.0, 0.0]), GRPOSettings(baseline="leave_one_out"))
    assert g.advantages == pytest.approx([1.0, -0.5, -0.5])  # r_i - mean of the others
    assert g.keep == [1, 1, 0]
    g2 = finalize(Scored([_traj(3, 4)] * 3, [1.0, 0.0, 0.0]), GRPOSettings(baseline="mean_std", overlong_filtering=False))
    assert g2.advantages == pytest.approx([(1 - 1 / 3) / (0.57735 + 1e-6), (-1 / 3) / 0.57735, (-1 / 3) / 0.57735], rel=1e-4)
    assert g2.keep == [1, 1, 1]


def test_blamed_step_credit_spares_the_steps_before_the_blamed_one() -> None:
    right, blamed, unblamed = _traj(2, 6), _traj(2, 6, observation_at=3), _traj(2, 6)
    blamed.info["blame_tokens"] = [2, 3]  # the false step is completion token 2; token 3 is an observation (no loss)
    g = finalize(Scored([right, blamed, unblamed], [1.0, 0.0, 0.0]), GRPOSettings())
    plain, local = to_sequences([g]), to_sequences([g], blamed_step=True)
    policy = lambda s: [k - 2 for k, label in enumerate(s.labels) if label != IGNORE]  # noqa: E731 - completion positions with a loss
    assert [policy(s) for s in plain] == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 4, 5], [0, 1, 2, 3, 4, 5]]
    assert [policy(s) for s in local] == [[0, 1, 2, 3, 4, 5], [2, 4, 5], [0, 1, 2, 3, 4, 5]]
    assert [s.advantage for s in local] == [s.advantage for s in plain] == pytest.approx([1.0, -0.5, -0.5])
    lucky = finalize(Scored([_traj(2, 6), blamed], [0.0, 1.0]), GRPOSettings())  # blamed but above its group: whole
    assert [policy(s) for s in to_sequences([lucky], blamed_step=True)] == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 4, 5]]


def test_negative_advantage_scale_shrinks_only_the_samples_below_their_group() -> None:
    rewards = [1.0, 0.5, 0.0, 0.0]  # leave-one-out: 5/6, 1/6, -1/2, -1/2
    g = finalize(Scored([_traj(2, 3)] * 4, rewards), GRPOSettings(negative_advantage_scale=0.1))
    assert g.advantages == pytest.approx([5 / 6, 1 / 6, -0.05, -0.05])
    assert finalize(Scored([_traj(2, 3)] * 4, rewards), GRPOSettings()).advantages == pytest.approx([5 / 6, 1 / 6, -0.5, -0.5])
    with pytest.raises(ValueError, match="negative_advantage_scale"):
        GRPOSettings(negative_advantage_scale=1.5)


def test_greedy_baseline_scores_samples_against_the_greedy_episode_and_drops_it() -> None:
    cfg = GRPOSettings(baseline="greedy", negative_advantage_scale=0.5)
    trajs = [_traj(2, 3), _traj(2, 3), _traj(2, 3, truncated=True), _greedy(_traj(2, 5))]
    g = finalize(Scored(trajs, [1.0, 0.5, 0.0, 0.5], {"budget": [0.1, 0.2, 0.3, 0.4]}), cfg)
    assert g.trajectories == trajs[:3] and g.greedy is trajs[3] and g.greedy_reward == 0.5
    assert g.advantages == pytest.approx([0.5, 0.0, -0.25]) and g.keep == [1, 1, 0]
    assert g.components == {"budget": [0.1, 0.2, 0.3]}
    assert len(to_sequences([g])) == 3  # the greedy episode is not trained on
    # Samples that agree still train when the greedy answer differs; they carry nothing when it agrees.
    agree = finalize(Scored([_traj(2, 3), _traj(2, 3), _greedy(_traj(2, 3))], [1.0, 1.0, 0.0]), cfg)
    flat = finalize(Scored([_traj(2, 3), _traj(2, 3), _greedy(_traj(2, 3))], [1.0, 1.0, 1.0]), cfg)
    assert agree.advantages == [1.0, 1.0]
    assert select_groups([flat, agree], needed=1, dynamic_sampling=True) == ([agree], [flat])
    with pytest.raises(AlignError, match="no greedy episode"):  # groups collected without it
        finalize(Scored([_traj(2, 3)] * 3, [1.0, 0.0, 0.0]), cfg)


def test_dynamic_sampling_drops_all_equal_groups_and_fills_with_zero_mask() -> None:
    cfg = GRPOSettings()
    informative = finalize(Scored([_traj(2, 3), _traj(2, 3)], [1.0, 0.0]), cfg)
    flat = finalize(Scored([_traj(2, 3), _traj(2, 3)], [1.0, 1.0]), cfg)
    kept, dropped = select_groups([flat, informative], needed=2, dynamic_sampling=True)
    assert kept == [informative] and dropped == [flat]
    groups = fill(kept, dropped, needed=2)
    assert groups[1].keep == [0, 0]
    seqs = to_sequences(groups)
    assert all(l == IGNORE for s in seqs[2:] for l in s.labels)
    kept_all, _ = select_groups([flat, informative], needed=2, dynamic_sampling=False)
    assert kept_all == [flat, informative]
    with pytest.raises(ValueError):
        fill([], [], needed=1)


def test_sequences_train_only_on_policy_tokens_with_aligned_logprobs() -> None:
    g = finalize(Scored([_traj(3, 4, observation_at=2), _traj(3, 4)], [1.0, 0.0]), GRPOSettings())
    s = to_sequences([g])[0]
    assert s.labels == [IGNORE] * 3 + [50, 51, IGNORE, 53]
    mbs = micro_batches(to_sequences([g]), world_size=1, accumulation=1, pad_id=0, aggregation="token")
    mb = mbs[0][0]
    # Shifted position t predicts token t+1: completion token j sits at prompt_len - 1 + j.
    row = int((mb["advantages"] == 1.0).nonzero()[0])
    assert mb["loss_mask"][row].tolist() == [0, 0, 1, 1, 0, 1]
    assert mb["rollout_logprobs"][row].tolist() == [0, 0, -0.5, -0.5, 0, -0.5]
    assert float(mb["loss_denominator"]) == 7.0  # 3 + 4 policy tokens


def test_micro_batches_split_over_ranks_and_steps() -> None:
    groups = [finalize(Scored([_traj(2, n), _traj(2, n + 1)], [1.0, 0.0]), GRPOSettings()) for n in range(1, 5)]
    per_rank = micro_batches(to_sequences(groups), world_size=2, accumulation=2, pad_id=0, aggregation="sequence")
    assert [len(r) for r in per_rank] == [2, 2]
    assert sum(mb["input_ids"].shape[0] for r in per_rank for mb in r) == 8
    assert all(float(mb["loss_denominator"]) == 8.0 for r in per_rank for mb in r)
    lengths = [mb["attention_mask"].sum(-1).max().item() for r in per_rank for mb in r]
    assert lengths == sorted(lengths, reverse=True)  # sorted by length: little padding


def test_task_mixer_mixes_by_weight_and_resumes_exactly() -> None:
    tasks = {e: [Task(id=f"{e}{i}", env=e, prompt=[]) for i in range(5)] for e in ("math", "code")}
    a = TaskMixer(tasks, {"math": 0.75, "code": 0.25}, seed=0)
    first = a.next(4)
    assert [t.env for t in first] == ["math", "math", "math", "code"]
    state = a.state_dict()
    rest = [t.id for t in a.next(8)]
    b = TaskMixer(tasks, {"math": 0.75, "code": 0.25}, seed=0)
    b.load_state_dict(state)
    assert [t.id for t in b.next(8)] == rest
    assert len({t.id for t in a.next(0) + first + a.next(4)}) >= 4


def test_reasoning_modes_follow_the_recipe_shares() -> None:
    cfg = RLReasoningConfig(no_think_fraction=0.2, budget_fraction=0.3, budgets=[16, 32])
    modes = [assign_mode(Task(id=str(i), env="math", prompt=[]), cfg, seed=0) for i in range(2000)]
    off = sum(not m.thinking for m in modes) / len(modes)
    budgeted = [m.budget for m in modes if m.thinking and m.budget]
    assert off == pytest.approx(0.2, abs=0.03) and len(budgeted) / len(modes) == pytest.approx(0.3, abs=0.03)
    assert set(budgeted) == {16, 32}
    assert assign_mode(Task(id="7", env="math", prompt=[]), cfg, 0) == modes[7]  # deterministic


def test_routed_experts_ride_along_with_their_tokens_into_micro_batches() -> None:
    short, long = _traj(2, 2), _traj(3, 3)
    # Each token's experts carry its position in the sequence: [len(ids), 2 MoE layers, top-2].
    short.routed_experts = np.arange(4).repeat(4).reshape(4, 2, 2)
    long.routed_experts = np.arange(6).repeat(4).reshape(6, 2, 2)
    long.routed_experts[-1] = -1  # the last token is never fed to the engine
    g = finalize(Scored([short, long], [1.0, 0.0]), GRPOSettings())
    mb = micro_batches(to_sequences([g], routed_experts=True), world_size=1, accumulation=1, pad_id=0, aggregation="token")[0][0]
    assert mb["routed_experts"].shape == (2, 6, 2, 2) and mb["routed_experts"].dtype == torch.int8  # indices < 128
    for i, seq in enumerate(mb["sequence_index"].tolist()):
        experts = [short, long][seq].routed_experts
        assert mb["routed_experts"][i, : len(experts)].tolist() == experts.tolist()
        assert (mb["routed_experts"][i, len(experts) :] == -1).all()  # padding
    assert "routed_experts" not in micro_batches(to_sequences([g]), 1, 1, 0, "token")[0][0]  # replay off


def test_replay_without_routed_experts_names_the_trajectory() -> None:
    g = finalize(Scored([_traj(2, 2), _traj(2, 2)], [1.0, 0.0]), GRPOSettings())
    with pytest.raises(AlignError, match="task 't0' \\(environment math\\) has none: turn on rollout.return_routed_experts"):
        to_sequences([g], routed_experts=True)


def test_seq_logprob_error_is_the_mean_multiplicative_probability_error() -> None:
    train = torch.tensor([[0.0, math.log(3), -5.0], [-1.0, -1.0, 0.0]])
    rollout = torch.tensor([[0.0, 0.0, 0.0], [-1.0 - math.log(2), -1.0 + math.log(2), 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    # Row 0: (e^0 + e^ln3) / 2 = 2 (the masked token's error does not count); row 1: errors of
    # opposite sign do not cancel: (2 + 2) / 2 = 2. A row without tokens scores 1.
    assert seq_logprob_error(train, rollout, mask).tolist() == pytest.approx([2.0, 2.0])
    assert seq_logprob_error(train, rollout, torch.zeros_like(mask)).tolist() == [1.0, 1.0]


def test_sequence_guard_masks_exactly_the_sequences_over_the_threshold() -> None:
    trajs = [_traj(2, 2) for _ in range(4)]
    for t, env in zip(trajs, ["math", "math", "code", "code"]):
        t.env = env
    groups = [finalize(Scored(trajs[:2], [1.0, 0.0]), GRPOSettings()), finalize(Scored(trajs[2:], [1.0, 0.0]), GRPOSettings())]
    per_rank = micro_batches(to_sequences(groups), world_size=2, accumulation=1, pad_id=0, aggregation="token")
    # Per sequence, the learner's log-probs on its 2 policy tokens are the rollout's (-0.5) plus
    # these deltas: errors (e^0.1 + e^0.1)/2 = 1.105 and (e^ln2.9 + 1)/2 = 1.95 (under 2: kept),
    # (e^ln2 + e^ln4)/2 = 3.0 and (e^ln3.2 + 1)/2 = 2.1 (over 2: masked).
    deltas = {0: [0.1, -0.1], 1: [math.log(2.9), 0.0], 2: [math.log(2), -math.log(4)], 3: [-math.log(3.2), 0.0]}
    for mbs in per_rank:
        for mb in mbs:
            mb["old_logprobs"] = mb["rollout_logprobs"].clone()
            for i, seq in enumerate(mb["sequence_index"].tolist()):
                cols = mb["loss_mask"][i].nonzero().flatten()
                mb["old_logprobs"][i, cols] += torch.tensor(deltas[seq])
    shares = mask_mismatched([per_rank], 2.0, "token", [t.env for t in trajs])
    assert shares == {"": 0.5, "math": 0.0, "code": 1.0}
    kept = {seq: float(mb["loss_mask"][i].sum()) for mbs in per_rank for mb in mbs for i, seq in enumerate(mb["sequence_index"].tolist())}
    assert kept == {0: 2.0, 1: 2.0, 2: 0.0, 3: 0.0}
    # Masked sequences leave the denominator too: 2 sequences x 2 tokens remain.
    assert all(float(mb["loss_denominator"]) == 4.0 for mbs in per_rank for mb in mbs)


def test_update_batches_shuffle_sequences_into_updates_with_their_own_denominators() -> None:
    # 8 groups of 2 with completions of 1..16 tokens: 16 sequences, 4 updates of 4, 2 micro-batches each.
    groups = [finalize(Scored([_traj(2, 2 * n + 1), _traj(2, 2 * n + 2)], [1.0, 0.0]), GRPOSettings()) for n in range(8)]
    seqs = to_sequences(groups)
    updates = update_batches(seqs, updates=4, world_size=1, accumulation=2, pad_id=0, aggregation="token", seed=3)
    assert len(updates) == 4 and all(len(u) == 1 and len(u[0]) == 2 for u in updates)
    seen = [i for u in updates for mb in u[0] for i in mb["sequence_index"].tolist()]
    assert sorted(seen) == list(range(16))  # every sequence once, indexed in the step's list
    for u in updates:
        idx = [i for mb in u[0] for i in mb["sequence_index"].tolist()]
        policy_tokens = sum(len(seqs[i].input_ids) - 2 for i in idx)  # prompts are 2 tokens
        assert all(float(mb["loss_denominator"]) == policy_tokens for mb in u[0])
        for mb in u[0]:  # each row is the sequence its index names
            for row, i in enumerate(mb["sequence_index"].tolist()):
                assert int(mb["attention_mask"][row].sum()) == len(seqs[i].input_ids)
    # Shuffled, not by length: the first update is not the 4 longest sequences.
    assert sorted(i for mb in updates[0][0] for i in mb["sequence_index"].tolist()) != [12, 13, 14, 15]
    assert update_batches(seqs, 4, 1, 2, 0, "token", seed=3)[1][0][0]["sequence_index"].tolist() == updates[1][0][0]["sequence_index"].tolist()
    # One update: the plain micro-batches of the whole step.
    one = update_batches(seqs, updates=1, world_size=1, accumulation=2, pad_id=0, aggregation="token", seed=3)
    assert float(one[0][0][0]["loss_denominator"]) == sum(len(s.input_ids) - 2 for s in seqs)


def test_mask_mismatched_recomputes_each_updates_denominator() -> None:
    trajs = [_traj(2, 2) for _ in range(4)]
    groups = [finalize(Scored(trajs[:2], [1.0, 0.0]), GRPOSettings()), finalize(Scored(trajs[2:], [1.0, 0.0]), GRPOSettings())]
    updates = update_batches(to_sequences(groups), updates=2, world_size=1, accumulation=1, pad_id=0, aggregation="token", seed=0)
    masked_seq = updates[0][0][0]["sequence_index"].tolist()[0]
    for u in updates:
        mb = u[0][0]
        mb["old_logprobs"] = mb["rollout_logprobs"].clone()
        for row, i in enumerate(mb["sequence_index"].tolist()):
            if i == masked_seq:
                mb["old_logprobs"][row] += mb["loss_mask"][row] * 5.0
    assert mask_mismatched(updates, 2.0, "token")[""] == 0.25
    assert float(updates[0][0][0]["loss_denominator"]) == 2.0  # one sequence of 2 tokens left in the first update
    assert float(updates[1][0][0]["loss_denominator"]) == 4.0


def test_combine_updates_sums_counts_and_averages_the_loss() -> None:
    a = {"loss": 1.0, "tokens": 10.0, "clip_frac_sum": 2.0, "grad_norm": 0.5, "lr": 1e-3}
    b = {"loss": 3.0, "tokens": 6.0, "clip_frac_sum": 1.0, "grad_norm": 1.5, "lr": 9e-4}
    assert combine_updates([a, b]) == {"loss": 2.0, "tokens": 16.0, "clip_frac_sum": 3.0, "grad_norm": 1.0, "lr": 9e-4}
    assert combine_updates([a]) == a
