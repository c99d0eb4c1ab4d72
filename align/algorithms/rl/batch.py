"""From trajectories to a training batch: scores, filters, group advantages, micro-batches.

Pure functions over :class:`rollout.types.Trajectory` lists, tested on constructed groups.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from align.config.schema import GRPOSettings
from align.errors import AlignError
from align.losses import IGNORE, group_advantages, kl_k3, seq_logprob_error
from rollout.types import Trajectory


@dataclass
class Scored:
    """A group of G trajectories of one prompt, with rewards and advantages."""

    trajectories: list[Trajectory]
    rewards: list[float]
    components: dict[str, list[float | None]] = field(default_factory=dict)
    advantages: list[float] = field(default_factory=list)
    # 0 drops a sequence from the loss (overlong filtering, or a filler group).
    keep: list[int] = field(default_factory=list)
    # grpo.baseline=greedy: the group's greedy episode, its baseline; not trained on (finalize).
    greedy: Trajectory | None = None
    greedy_reward: float | None = None

    @property
    def all_equal(self) -> bool:
        """No sample differs from its baseline: the group carries no signal."""
        if self.greedy_reward is not None:
            return all(abs(r - self.greedy_reward) < 1e-9 for r in self.rewards)
        return max(self.rewards) - min(self.rewards) < 1e-9

    @property
    def env_failed(self) -> bool:
        """The environment errored on some samples and its rewards carry no signal across the group.

        Only the reward functions (length, budget) can then tell the samples apart. Healthy groups
        with equal environment rewards (all correct) keep those components on purpose: that is
        where budget and length shaping train.
        """
        env = [float(t.reward) for t in self.trajectories]
        return max(env) - min(env) < 1e-9 and any(t.info.get("error") for t in self.trajectories)


def finalize(group: Scored, cfg: GRPOSettings) -> Scored:
    """Advantages (leave-one-out, mean/std, or against the greedy episode; negatives scaled by
    ``negative_advantage_scale``) and overlong filtering for one group.

    Overlong filtering (DAPO): a truncated trajectory is left out of the loss, since its reward
    says nothing about an answer it never gave; it still counts in the group's baseline.
    """
    if cfg.baseline == "greedy":
        # The last trajectory is the greedy episode (rollout.collect, greedy=True): the baseline.
        if not group.trajectories[-1].info.get("greedy"):
            raise AlignError(f"grpo.baseline=greedy: the group of task {group.trajectories[-1].task.id!r} has no greedy episode (collect it with greedy=True)")
        *group.trajectories, group.greedy = group.trajectories
        *group.rewards, group.greedy_reward = group.rewards
        group.components = {k: v[:-1] for k, v in group.components.items()}
        adv = [r - group.greedy_reward for r in group.rewards]
    else:
        adv = group_advantages(torch.tensor(group.rewards, dtype=torch.float64), cfg.baseline).tolist()
    group.advantages = [a * cfg.negative_advantage_scale if a < 0 else a for a in adv]
    group.keep = [0 if (cfg.overlong_filtering and t.truncated) else 1 for t in group.trajectories]
    return group


def select_groups(groups: Sequence[Scored], needed: int, dynamic_sampling: bool, env_signal: bool = False) -> tuple[list[Scored], list[Scored]]:
    """(informative groups, dropped groups). Without dynamic sampling all groups are kept.

    Dynamic sampling drops all-equal groups and, with ``env_signal``, groups where the
    environment failed (:attr:`Scored.env_failed`), kept only by the reward functions'
    components: with a broken environment (every sample an error, reward 0) those would train
    the policy on shaping terms alone.
    """
    if not dynamic_sampling:
        return list(groups[:needed]), []

    def informative(g: Scored) -> bool:
        return not g.all_equal and not (env_signal and g.env_failed)

    return [g for g in groups if informative(g)][:needed], [g for g in groups if not informative(g)]


def fill(groups: list[Scored], dropped: list[Scored], needed: int) -> list[Scored]:
    """Top the step up to ``needed`` groups with dropped ones, out of the loss (keep = 0).

    The learners need a fixed number of sequences per step (accumulation is fixed at start);
    a filler's zero advantages and zero mask add nothing to the gradient or the denominator.
    """
    out = list(groups)
    for g in dropped[: needed - len(out)]:
        g.keep = [0] * len(g.trajectories)
        out.append(g)
    if len(out) < needed:
        raise ValueError(f"only {len(out)} groups for {needed} slots")
    return out


@dataclass
class Sequence_:
    input_ids: list[int]
    labels: list[int]  # the token at t, or IGNORE where there is no loss at t
    rollout_logprobs: list[float]  # aligned with labels[1:]
    advantage: float
    routed_experts: np.ndarray | None = None  # [len(input_ids), n_moe_layers, top_k], -1: not routed


def to_sequences(groups: Sequence[Scored], routed_experts: bool = False, blamed_step: bool = False) -> list[Sequence_]:
    """Prompt + completion ids; labels only on policy tokens of kept trajectories.

    ``blamed_step`` (``grpo.credit``): a trajectory with a negative advantage and
    ``info["blame_tokens"] = [i, j)`` (completion indices, rollout/episode.py) has labels from
    token ``i`` on: not on the correct steps before the blamed one.

    ``routed_experts``: carry each trajectory's rollout expert choices (routing replay); a
    trajectory without them is an error that names it.
    """
    out = []
    for g in groups:
        for t, adv, keep in zip(g.trajectories, g.advantages, g.keep, strict=True):
            ids = list(t.prompt_ids) + list(t.completion_ids)
            first = t.info["blame_tokens"][0] if blamed_step and adv < 0 and "blame_tokens" in t.info else 0
            labels = [IGNORE] * len(t.prompt_ids) + [
                tok if (m and keep and k >= first) else IGNORE for k, (tok, m) in enumerate(zip(t.completion_ids, t.loss_mask))
            ]
            lps = [0.0] * (len(t.prompt_ids) - 1) + list(t.rollout_logprobs)
            experts = None
            if routed_experts:
                experts = t.routed_experts
                if experts is None or len(experts) != len(ids):
                    got = "none" if experts is None else f"{len(experts)} rows for {len(ids)} tokens"
                    raise AlignError(
                        f"grpo.routing_replay=rollout needs the engine's routed experts for every token, but the trajectory of "
                        f"task {t.task.id!r} (environment {t.env}) has {got}: turn on rollout.return_routed_experts, or set grpo.routing_replay=off"
                    )
            out.append(Sequence_(ids, labels, lps, float(adv), experts))
    return out


def update_batches(
    seqs: list[Sequence_], updates: int, world_size: int, accumulation: int, pad_id: int, aggregation: str, seed: int
) -> list[list[list[dict[str, torch.Tensor]]]]:
    """A step's sequences as ``updates`` optimizer updates, each :func:`micro_batches` per rank.

    The sequences are shuffled (``seed``) into equal parts, so each update sees a mix of groups
    and environments, not the longest sequences first; each part's loss has its own unit count.
    ``sequence_index`` still indexes ``seqs``. One update keeps ``seqs``' order (no shuffle).
    """
    if updates == 1:
        return [micro_batches(seqs, world_size, accumulation, pad_id, aggregation)]
    perm = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(seed)).tolist()
    size = len(seqs) // updates
    out = []
    for u in range(updates):
        part = perm[u * size : (u + 1) * size]
        step_index = torch.tensor(part, dtype=torch.long)  # position in ``seqs`` of each of this part's sequences
        per_rank = micro_batches([seqs[i] for i in part], world_size, accumulation, pad_id, aggregation)
        for mbs in per_rank:
            for mb in mbs:
                mb["sequence_index"] = step_index[mb["sequence_index"]]
        out.append(per_rank)
    return out


def micro_batches(seqs: list[Sequence_], world_size: int, accumulation: int, pad_id: int, aggregation: str) -> list[list[dict[str, torch.Tensor]]]:
    """Per-rank micro-batches, sorted by length (less padding), each with the global unit count.

    Each micro-batch carries ``sequence_index``: the position in ``seqs`` of each of its rows.
    """
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].input_ids))
    parts = world_size * accumulation
    size = len(seqs) // parts
    chunks = [[seqs[i] for i in order[k * size : (k + 1) * size]] for k in range(parts)]
    built = [_pad(c, pad_id) for c in chunks]
    for k, mb in enumerate(built):
        # Which sequence of ``seqs`` each row is, for metrics per environment after the sort.
        mb["sequence_index"] = torch.tensor(order[k * size : (k + 1) * size], dtype=torch.long)
    _set_denominator(built, aggregation)
    return [built[r * accumulation : (r + 1) * accumulation] for r in range(world_size)]


def _set_denominator(built: list[dict[str, torch.Tensor]], aggregation: str) -> None:
    """The global unit count (policy tokens, or sequences with any) into every micro-batch."""
    if aggregation == "token":
        total = sum(float(mb["loss_mask"].sum()) for mb in built)
    else:
        total = sum(float((mb["loss_mask"].sum(-1) > 0).sum()) for mb in built)
    for mb in built:
        mb["loss_denominator"] = torch.tensor(max(total, 1.0))


def mask_mismatched(
    updates: list[list[list[dict[str, torch.Tensor]]]], max_error: float, aggregation: str, labels: Sequence[str] = ()
) -> dict[str, float]:
    """Sequence-level mismatch guard: take whole sequences out of the loss when their learner and
    rollout log-probs disagree by more than ``max_error`` (:func:`align.losses.seq_logprob_error`).

    ``updates`` are a step's optimizer updates, each per-rank micro-batches (:func:`update_batches`).
    Needs ``old_logprobs`` in every micro-batch. A masked sequence's ``loss_mask`` row becomes 0, and
    each update's denominator is recomputed, so it leaves the loss's numerator *and* denominator (a
    mask, not a zero weight). Returns the share of sequences masked (over those with policy tokens):
    ``{"": overall}``, plus ``{label: share}`` per distinct label when ``labels`` names each sequence.
    """
    masked: dict[str, float] = {"": 0.0}
    seen: dict[str, float] = {"": 0.0}
    built = [mb for per_rank in updates for mbs in per_rank for mb in mbs]
    for mb in built:
        m = mb["loss_mask"]
        has_tokens = m.sum(-1) > 0
        drop = (seq_logprob_error(mb["old_logprobs"], mb["rollout_logprobs"], m) > max_error) & has_tokens
        mb["loss_mask"] = m * (~drop).unsqueeze(-1).to(m.dtype)
        rows = mb["sequence_index"].tolist() if labels else []
        for key, d, h in [("", drop.sum(), has_tokens.sum())] + [(labels[r], drop[i], has_tokens[i]) for i, r in enumerate(rows)]:
            masked[key] = masked.get(key, 0.0) + float(d)
            seen[key] = seen.get(key, 0.0) + float(h)
    for per_rank in updates:
        _set_denominator([mb for mbs in per_rank for mb in mbs], aggregation)
    return {k: masked[k] / max(seen[k], 1.0) for k in masked}


def _pad(seqs: list[Sequence_], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), n), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(seqs), n), dtype=torch.long)
    lps = torch.zeros((len(seqs), n - 1), dtype=torch.float32)
    for i, s in enumerate(seqs):
        L = len(s.input_ids)
        ids[i, :L] = torch.tensor(s.input_ids)
        labels[i, :L] = torch.tensor(s.labels)
        attn[i, :L] = 1
        lps[i, : L - 1] = torch.tensor(s.rollout_logprobs[: L - 1])
    out = {
        "input_ids": ids,
        "attention_mask": attn,
        "labels": labels,
        "loss_mask": (labels[:, 1:] != IGNORE).float(),
        "rollout_logprobs": lps,
        "advantages": torch.tensor([s.advantage for s in seqs], dtype=torch.float32),
    }
    shapes = {s.routed_experts.shape[1:] for s in seqs if s.routed_experts is not None}
    if shapes:
        (shape,) = shapes  # one policy made them all
        # int8 holds indices up to 127 (Nano 3 has 128 experts): 23 MoE layers x top-6 x 20k tokens is
        # 2.8 MB a sequence that way.
        top = max(int(s.routed_experts.max(initial=-1)) for s in seqs if s.routed_experts is not None)
        dtype = torch.int8 if top < 128 else torch.int16
        experts = torch.full((len(seqs), n, *shape), -1, dtype=dtype)
        for i, s in enumerate(seqs):
            if s.routed_experts is not None:  # copied: arrays from Ray are read-only (torch.from_numpy warns)
                experts[i, : len(s.input_ids)] = torch.tensor(np.asarray(s.routed_experts, dtype=np.int16), dtype=dtype)
        out["routed_experts"] = experts
    return out


def mean_k3(per_rank: list[list[dict[str, torch.Tensor]]], sample_key: str, other_key: str, labels: Sequence[str] = ()) -> dict[str, float]:
    """Mean per-token k3 KL(sample || other) over the policy tokens (``loss_mask``) of a step.

    ``sample_key`` holds the log-probs of the policy the tokens are taken as drawn from. Returns
    ``{"": overall}``, plus ``{label: mean}`` per distinct label when ``labels`` names each
    sequence (indexed by ``sequence_index``), e.g. its environment.
    """
    sums: dict[str, float] = {"": 0.0}
    counts: dict[str, float] = {"": 0.0}
    for mbs in per_rank:
        for mb in mbs:
            m = mb["loss_mask"]
            per_row = (kl_k3(mb[sample_key], mb[other_key]) * m).sum(-1)
            n_row = m.sum(-1)
            sums[""] += float(per_row.sum())
            counts[""] += float(n_row.sum())
            for i, row in enumerate(mb["sequence_index"].tolist() if labels else []):
                sums[labels[row]] = sums.get(labels[row], 0.0) + float(per_row[i])
                counts[labels[row]] = counts.get(labels[row], 0.0) + float(n_row[i])
    return {k: sums[k] / max(counts[k], 1.0) for k in sums}


def mismatch(per_rank: list[list[dict[str, Any]]]) -> dict[str, float]:
    """Train/inference mismatch over policy tokens: k3 KL(rollout || learner) and mean |delta log p|.

    With off-policy overlap it includes the staleness: the rollout weights are older than the learner's.
    """
    absdiff = n = 0.0
    for mbs in per_rank:
        for mb in mbs:
            m = mb["loss_mask"]
            absdiff += float(((mb["rollout_logprobs"] - mb["old_logprobs"]).abs() * m).sum())
            n += float(m.sum())
    return {"mismatch_kl": mean_k3(per_rank, "rollout_logprobs", "old_logprobs")[""], "mismatch_abs_logp": absdiff / max(n, 1)}


@dataclass
class StepRollout:
    """One step's scored trajectories, and the weights version (learner updates) that generated them.

    In async mode ``weights_version`` is the oldest version of any trained token, ``prompt_ids``
    the stream ids of the groups taken (``all_groups``' order) and ``metrics`` the queue's.
    """

    step: int
    weights_version: int
    all_groups: list[Scored] = field(default_factory=list)
    kept: list[Scored] = field(default_factory=list)
    dropped: list[Scored] = field(default_factory=list)
    train_groups: list[Scored] = field(default_factory=list)
    tasks_state: dict[str, Any] = field(default_factory=dict)
    curriculum: dict[str, float] = field(default_factory=dict)
    reward_metrics: dict[str, float] = field(default_factory=dict)
    time_rollout_s: float = 0.0
    time_score_s: float = 0.0
    rollout_tokens: int = 0
    prompt_ids: list[int] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def combine_updates(results: list[dict[str, float]]) -> dict[str, float]:
    """One step's learner metrics from its optimizer updates' (``grpo.mini_batches``): sums add up
    (tokens, clip counts), ``loss`` and ``grad_norm`` are the mean over updates, ``lr`` the last one's."""
    out = {k: sum(r[k] for r in results) for k in results[0]}
    for k in ("loss", "grad_norm"):
        if k in out:
            out[k] /= len(results)
    if "lr" in out:
        out["lr"] = results[-1]["lr"]
    return out


def step_metrics(groups: list[Scored], train: dict[str, float]) -> dict[str, float]:
    """One step's reward, accuracy and learner metrics, overall and per environment."""
    trajs = [t for g in groups for t in g.trajectories]
    totals = [x for g in groups for x in g.rewards]
    out = {
        "reward": sum(totals) / len(totals),
        "accuracy": sum(1.0 for t in trajs if t.correct) / len(trajs),
        "loss": train.get("loss", 0.0),
        "grad_norm": train.get("grad_norm", 0.0),
        "lr": train.get("lr", 0.0),
        "clip_frac": train.get("clip_frac_sum", 0.0) / max(train.get("tokens", 1.0), 1.0),
        "errors": float(sum(1 for t in trajs if t.info.get("error"))),
    }
    per_env: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        per_env[t.env].append(t)
    greedy: dict[str, list[Trajectory]] = defaultdict(list)
    for g in groups:
        if g.greedy is not None:
            greedy[g.greedy.env].append(g.greedy)
    for env, ts in greedy.items():  # grpo.baseline=greedy: how the training prompts fare greedily
        out[f"{env}/greedy_accuracy"] = sum(1.0 for t in ts if t.correct) / len(ts)
    for env, ts in per_env.items():
        out[f"{env}/reward"] = sum(t.reward for t in ts) / len(ts)
        out[f"{env}/accuracy"] = sum(1.0 for t in ts if t.correct) / len(ts)
        out[f"{env}/length"] = sum(t.num_policy_tokens for t in ts) / len(ts)
        out[f"{env}/thinking_tokens"] = sum(t.thinking_tokens for t in ts) / len(ts)
        out[f"{env}/forced_close_rate"] = sum(1.0 for t in ts if t.forced_close) / len(ts)
        wrong = [t for t in ts if t.correct is False]
        if any("blame" in t.info for t in wrong):  # an environment that blames steps: the share of its wrong samples it could
            out[f"{env}/blamed_rate"] = sum(1.0 for t in wrong if "blame_tokens" in t.info) / len(wrong)
    return out
