"""Reward-model driver: Bradley-Terry on preference pairs, or multi-attribute regression.

Reads top to bottom: data -> learners holding a :class:`~align.learner.reward_model.RewardModel`
(the policy's backbone + a linear head) -> the train loop SFT and DPO use -> a reward-model
folder (``final/``, format in :mod:`align.learner.reward_model`) that RL recipes name as a
reward (``rewards: [{name: reward_model, params: {path: runs/tiny-rm/final}}]``).

- ``rm.objective: bradley_terry``: one output, ``-log s(r_chosen - r_rejected)``; each eval
  reports held-out pairwise accuracy (share of pairs with r_chosen > r_rejected) and margins,
  and per ``pair_kind`` where the pairs carry one (``accuracy_wrong``, ``accuracy_padded``).
- ``rm.objective: genrm``: a generative judge instead of a scalar head (:mod:`align.algorithms.genrm`).
- ``rm.objective: regression``: one output per attribute named in ``rm.attributes`` (HelpSteer
  style rows ``{"prompt", "response", "attributes": {name: rating}}``), mean squared error.
  Each eval reports each attribute's held-out MSE next to the MSE of always predicting the
  train mean (the bar a useful head must clear), and a pairwise accuracy: over held-out
  responses to the same prompt whose weighted ratings differ, the share the weighted
  prediction orders the same way. The weights in ``rm.attributes`` are saved with the model
  and combine the attributes into one reward at inference.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from align.algorithms import genrm
from align.algorithms.common import Job, JobError, console, count_pairs, finish, per_pair_means, prepare_job, train_loop
from align.cluster import LearnerGroup
from align.config import LoadedRecipe
from align.data import pad_batch
from align.learner.engine import MicroBatch
from align.learner.objectives import BradleyTerryObjective, reward_model_scores, regression_objective
from align.learner.reward_model import write_head_info


def count_ratings(mb: MicroBatch) -> float:
    """Ratings (rows x attributes) in a regression micro-batch: its loss unit."""
    return float(mb["attributes"].numel())


def attribute_means(names: Sequence[str]) -> Callable[[dict[str, float]], dict[str, float]]:
    """Summed per-attribute squared errors -> ``mse_<name>`` over the rows they came from."""

    def summarize(metrics: dict[str, float]) -> dict[str, float]:
        out = dict(metrics)
        rows = out.pop("rows", 0.0)
        for i, name in enumerate(names):
            if f"sq_err_{i}" in out:
                out[f"mse_{name}"] = out.pop(f"sq_err_{i}") / max(rows, 1.0)
        return out

    return summarize


def predict(job: Job, group: LearnerGroup, examples: Sequence[dict[str, Any]]) -> torch.Tensor:
    """``[N, num_labels]`` predictions for ``examples``, in chunks of the micro-batch size spread over the learners.

    Every learner gets the same number of chunks (the last is repeated and its result dropped),
    so ZeRO-3's gathered forward passes stay in step across ranks.
    """
    size = job.loaded.recipe.learner.micro_batch_size_per_device
    keep = ("input_ids",)
    chunks = [pad_batch([{k: ex[k] for k in keep} for ex in examples[i : i + size]], job.tokenizer.pad_token_id) for i in range(0, len(examples), size)]
    n = len(chunks)
    per_rank_count = -(-n // group.size)
    padded = chunks + [chunks[-1]] * (per_rank_count * group.size - n)
    per_rank = [padded[i * per_rank_count : (i + 1) * per_rank_count] for i in range(group.size)]
    out = group.compute(per_rank, reward_model_scores)
    return torch.cat([t for rank in out for t in rank][:n])


def pairwise_order_accuracy(rows: Sequence[dict[str, Any]], scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """Among responses to the same prompt with different targets: share ordered like the targets, and the pair count.

    >>> rows = [{"prompt": "a"}, {"prompt": "a"}, {"prompt": "b"}, {"prompt": "b"}]
    >>> pairwise_order_accuracy(rows, torch.tensor([0.9, 0.1, 0.2, 0.3]), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    (0.5, 2)
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[json.dumps(row["prompt"], sort_keys=True)].append(i)
    right = total = 0
    for idx in groups.values():
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                i, j = idx[a], idx[b]
                if targets[i] == targets[j]:
                    continue
                total += 1
                right += int((scores[i] - scores[j]) * (targets[i] - targets[j]) > 0)
    return (right / total if total else float("nan")), total


def accuracy_by_kind(rows: Sequence[dict[str, Any]], chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """``accuracy_<kind>``: the share of held-out pairs of each ``pair_kind`` scored chosen > rejected.

    >>> rows = [{"pair_kind": "wrong"}, {"pair_kind": "wrong"}, {"pair_kind": "padded"}, {}]
    >>> accuracy_by_kind(rows, torch.tensor([1.0, 0.0, 2.0, 0.0]), torch.tensor([0.0, 1.0, 1.0, 1.0]))
    {'accuracy_padded': 1.0, 'accuracy_wrong': 0.5}
    """
    kinds: dict[str, list[bool]] = defaultdict(list)
    for row, c, r in zip(rows, chosen.tolist(), rejected.tolist(), strict=True):
        if row.get("pair_kind"):
            kinds[str(row["pair_kind"])].append(c > r)
    return {f"accuracy_{k}": sum(v) / len(v) for k, v in sorted(kinds.items())}


def pair_kind_eval(job: Job) -> Callable[[LearnerGroup, int], dict[str, float]] | None:
    """Bradley-Terry eval extras where held-out pairs carry a ``pair_kind`` (the chat family's), as the GenRM reports."""
    rows, examples = job.data.eval.rows, job.data.eval.examples
    if not any(row.get("pair_kind") for row in rows):
        return None

    def extra(group: LearnerGroup, step: int) -> dict[str, float]:
        del step
        chosen, rejected = (predict(job, group, [{"input_ids": ex[f"{side}_input_ids"]} for ex in examples])[:, 0] for side in ("chosen", "rejected"))
        return accuracy_by_kind(rows, chosen, rejected)

    return extra


def regression_eval(job: Job, names: Sequence[str], weights: dict[str, float]) -> Callable[[LearnerGroup, int], dict[str, float]]:
    """The regression eval extras: mean-prediction baselines and the same-prompt pairwise accuracy."""
    train = torch.tensor([ex["attributes"] for ex in job.data.train.examples], dtype=torch.float64)
    evals = torch.tensor([ex["attributes"] for ex in job.data.eval.examples], dtype=torch.float64)
    w = torch.tensor([weights[n] for n in names], dtype=torch.float64)
    baseline = ((evals - train.mean(0)) ** 2).mean(0)

    def extra(group: LearnerGroup, step: int) -> dict[str, float]:
        del step
        if not len(evals):
            return {}
        pred = predict(job, group, job.data.eval.examples).double()
        acc, pairs = pairwise_order_accuracy(job.data.eval.rows, pred @ w, evals @ w)
        out = {f"mse_mean_baseline_{n}": float(baseline[i]) for i, n in enumerate(names)}
        if pairs:
            out["pairwise_accuracy"] = acc
        return out

    return extra


def run(loaded: LoadedRecipe, resume: bool = False) -> int:
    r = loaded.recipe
    s = r.rm
    if s.objective == "genrm":
        return genrm.run(loaded, resume)
    if s.objective == "regression":
        if not s.attributes:
            raise JobError("rm.objective is regression but rm.attributes is empty; name the rated attributes and their weights, "
                           "e.g. rm.attributes={helpfulness: 1.0, correctness: 0.5}")  # fmt: skip
        names, weights = tuple(s.attributes), dict(s.attributes)
        job = prepare_job(loaded, "attributes", attribute_names=names)
        objective, units, summarize = regression_objective, count_ratings, attribute_means(names)
        extra = regression_eval(job, names, weights)
    else:
        if s.attributes:
            raise JobError("rm.attributes names regression targets; a bradley_terry reward model has one output. "
                           "Remove rm.attributes or set rm.objective=regression")  # fmt: skip
        names, weights = ("reward",), {"reward": 1.0}
        job = prepare_job(loaded, "preference")
        objective, units, summarize, extra = BradleyTerryObjective(s.center_rewards_coefficient), count_pairs, per_pair_means, pair_kind_eval(job)
    console.print(f"[bold]align rm[/] {loaded.name}: {s.objective}, outputs {', '.join(names)}; "
                  + ", ".join(f"{k} {v}" for k, v in job.stats.items()))  # fmt: skip
    head = lambda folder: write_head_info(folder, names, weights)  # noqa: E731 - final/ and every checkpoint's hf/
    group, summary = train_loop(
        job, objective, units, s.max_steps, s.eval_every_steps, resume,
        model_kind="reward" if s.objective == "regression" else "pairwise_reward", num_labels=len(names), eval_extra=extra, summarize=summarize,
        hf_files=head,
    )  # fmt: skip
    metric = "accuracy" if s.objective == "bradley_terry" else "pairwise_accuracy"
    plots = {"train loss": ("train", "loss"), "eval loss": ("eval", "loss"), f"eval {metric}": ("eval", metric)}
    final = finish(job, group, plots, f"RM {loaded.name}", before_publish=head)
    group.shutdown()
    summary["final_checkpoint"] = str(final)
    summary["data"] = job.stats
    (job.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    first, last = summary["first_eval"] or {}, summary["last_eval"] or {}
    if metric in last:
        console.print(f"eval {metric} {first.get(metric, float('nan')):.3f} -> {last[metric]:.3f}")
    for n in names if s.objective == "regression" else ():
        console.print(f"eval mse {n}: {first.get(f'mse_{n}', float('nan')):.4f} -> {last.get(f'mse_{n}', float('nan')):.4f} "
                      f"(predicting the train mean: {last.get(f'mse_mean_baseline_{n}', float('nan')):.4f})")  # fmt: skip
    console.print(f"reward model: {final}")
    return 0
