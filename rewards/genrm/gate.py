"""Verifier gating of GenRM rewards: where a task has a verifier, a wrong answer never out-scores a right one.

Nemotron 3 Nano's RLHF lets the GenRM score open-ended prompts while verifiable environments
(math, code, ...) keep their verifier rewards in the same run. A prompt can be both: the tiny
world's ``chat`` family asks math and instruction-following questions with known answers, and a
judge that cannot tell a slipped digit from the right one (issue 17: the tiny judge scored
sampled math answers 3.09 right vs 3.10 wrong) teaches the policy to be wrong. The gate makes the
verifier decide and lets the judge grade only what the verifier accepts, per group (one prompt's answers):

- a trajectory whose ``correct`` is ``None`` (no verifier: an open-ended prompt) keeps its judged reward;
- in a group with a verified answer, every wrong answer gets the same floor,
  ``min(judged over the verified answers) - margin``, and every right answer keeps its judged reward,
  so a right answer scores at least ``margin`` above every wrong one, and the judge orders the right
  answers (concision, style) but not the wrong ones.

An all-wrong group is then all-equal (zero advantages; dynamic sampling drops it, as in verifier-only
RL). The first tiny-rlhf run with a gate that only lifted right answers above wrong ones (judge
order kept among wrong answers) still lost held-out accuracy (0.150 -> 0.100) and grew answers
(26.1 -> 28.9 tokens): at 15-30% train accuracy most groups were all wrong, and there the judge, which
scored wrong >= right in 2 of 3 (right, wrong) pairs, trained the policy alone.

``gate_stats`` counts what the gate overrode: over all (right, wrong) pairs of a group, those the
judge scored wrong >= right: an online measure of the judge's wrong-vs-right errors.
"""

from __future__ import annotations

from collections.abc import Sequence


def verifier_gate(judged: Sequence[float], correct: Sequence[bool | None], margin: float = 1.0) -> list[float]:
    """One group's judged rewards, gated on the verifier outcomes ``correct`` (see the module docstring).

    Wrong answers 1 and 2 (judged 5 and 1) get the floor min(2, 5, 1, 4) - 1 = 0; right answers 0
    and 3 keep 2 and 4; answer 4 has no verifier and keeps its score:

    >>> verifier_gate([2.0, 5.0, 1.0, 4.0, 3.0], [True, False, False, True, None])
    [2.0, 0.0, 0.0, 4.0, 3.0]
    >>> verifier_gate([2.0, 5.0], [False, False])  # all wrong: all equal
    [1.0, 1.0]
    """
    if len(judged) != len(correct):
        raise ValueError(f"{len(judged)} rewards for {len(correct)} verifier outcomes")
    verified = [r for r, c in zip(judged, correct, strict=True) if c is not None]
    if not verified:
        return list(judged)
    floor = min(verified) - margin
    return [floor if c is False else r for r, c in zip(judged, correct, strict=True)]


def gate_stats(judged: Sequence[float], correct: Sequence[bool | None]) -> tuple[int, int]:
    """``(pairs, overridden)``: (right, wrong) pairs in the group, and those the judge scored wrong >= right.

    >>> gate_stats([2.0, 5.0, 1.0, 4.0], [True, False, False, True])
    (4, 2)
    """
    right = [r for r, c in zip(judged, correct, strict=True) if c is True]
    wrong = [r for r, c in zip(judged, correct, strict=True) if c is False]
    return len(right) * len(wrong), sum(w >= r for r in right for w in wrong)
