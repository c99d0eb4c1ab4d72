"""The GenRM's verdict on an RL run: win rate of the final policy against the start policy.

Both policies answer the same held-out prompts greedily (the RL driver's step-0 and final
evaluations); the judge compares each pair of answers in both orders. Final wins a prompt when
its mean score over the parsed verdicts is higher, ties count one half, and a prompt with no
parsed verdict is left out (counted). The win rate comes with a 95% interval (normal approximation
on the per-prompt outcomes 1, 1/2, 0: :func:`interval95`). Mean answer lengths (policy tokens) of both come with it,
and the source verifier's accuracy where the environment has one.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from rewards.genrm.judge import Item
from rollout.types import Trajectory


def interval95(outcomes: Sequence[float]) -> tuple[float, float]:
    """Mean -/+ 1.96 standard errors of per-prompt outcomes (1 win, 0.5 tie, 0 loss); (nan, nan) below 2.

    By hand: mean 0.625, sample variance 0.6875 / 3, standard error 0.2394, half-width 0.4691.

    >>> [round(x, 3) for x in interval95([1.0, 1.0, 0.0, 0.5])]
    [0.156, 1.094]
    """
    if len(outcomes) < 2:
        return float("nan"), float("nan")
    mean, half = statistics.fmean(outcomes), 1.96 * statistics.stdev(outcomes) / len(outcomes) ** 0.5
    return mean - half, mean + half


def win_rate(judge_items: Any, start: Sequence[Trajectory], final: Sequence[Trajectory]) -> dict[str, float]:
    """``judge_items(items) -> calls`` (e.g. :meth:`GenRMReward.judge_items`) on matched (start, final) answers."""
    by_task = {t.task.id: t for t in start}
    pairs = [(by_task[t.task.id], t) for t in final if t.task.id in by_task]
    if not pairs:
        raise ValueError("win_rate: the start and final evaluations share no task")
    items = []
    for s, f in pairs:
        prompt = list(s.task.prompt)
        items += [Item(prompt, f.completion, s.completion), Item(prompt, s.completion, f.completion)]
    calls = judge_items(items)
    outcomes: list[float] = []
    for k in range(len(pairs)):
        va, vb = calls[2 * k].verdict, calls[2 * k + 1].verdict
        mine = [v.a for v in (va,) if v] + [v.b for v in (vb,) if v]
        theirs = [v.b for v in (va,) if v] + [v.a for v in (vb,) if v]
        if not mine:
            continue
        diff = sum(mine) / len(mine) - sum(theirs) / len(theirs)
        outcomes.append(1.0 if diff > 0 else 0.5 if diff == 0 else 0.0)
    n, judged = len(pairs), len(outcomes)
    low, high = interval95(outcomes)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    out = {
        "win_rate": sum(outcomes) / judged if judged else float("nan"),
        "win_rate_ci95_low": low,
        "win_rate_ci95_high": high,
        "ties": float(outcomes.count(0.5)),
        # Greedy answers the RL run left unchanged: the judge sees the same text twice, a tie by construction.
        "identical_answers": float(sum(s.completion == f.completion for s, f in pairs)),
        "prompts": float(n),
        "prompts_unjudged": float(n - judged),
        "length_start": mean([s.num_policy_tokens for s, _ in pairs]),
        "length_final": mean([f.num_policy_tokens for _, f in pairs]),
    }
    if all(s.correct is not None and f.correct is not None for s, f in pairs):
        out["verifier_accuracy_start"] = mean([float(bool(s.correct)) for s, _ in pairs])
        out["verifier_accuracy_final"] = mean([float(bool(f.correct)) for _, f in pairs])
        # McNemar's discordant pairs: is a change in accuracy beyond noise? (exact binomial on these two)
        out["verifier_right_to_wrong"] = float(sum(bool(s.correct) and not f.correct for s, f in pairs))
        out["verifier_wrong_to_right"] = float(sum(not s.correct and bool(f.correct) for s, f in pairs))
    return out
