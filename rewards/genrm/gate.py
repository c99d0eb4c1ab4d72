"""Verifier gating of GenRM rewards: where a task has a verifier, a wrong answer never out-scores a right one.

Nemotron 3 Nano's RLHF lets the GenRM score open-ended prompts while verifiable environments
(math, code, ...) keep their verifier rewards in the same run. A prompt can be both: the tiny
world's ``chat`` family asks math and instruction-following questions with known answers, and a
judge that cannot tell a slipped digit from the right one (issue 17: the tiny judge scored
sampled math answers 3.09 right vs 3.10 wrong) teaches the policy to be wrong. The gate makes the
verifier decide first and the judge second, per group (one prompt's answers):

- a trajectory whose ``correct`` is ``None`` (no verifier: an open-ended prompt) keeps its judged reward;
- in a group with at least one right and one wrong verified answer, every right answer gets
  ``gap = max(judged) - min(judged) + margin`` added (max/min over the group's verified answers),
  so it scores at least ``margin`` above every wrong one;
- a group whose verified answers are all right or all wrong is unchanged: the judge alone orders them.

Among answers with the same verifier outcome the judge's order and differences stand (the gap is
the same for all of them), so the GenRM still trains style and concision where the verifier is silent.

``gate_stats`` counts what the gate overrode: over all (right, wrong) pairs of a group, those the
judge scored wrong >= right: an online measure of the judge's wrong-vs-right errors.
"""

from __future__ import annotations

from collections.abc import Sequence


def verifier_gate(judged: Sequence[float], correct: Sequence[bool | None], margin: float = 1.0) -> list[float]:
    """One group's judged rewards, gated on the verifier outcomes ``correct`` (see the module docstring).

    Right answers 0 and 3 (judged 2 and 4) rise by max - min + 1 = 5 - 1 + 1 = 5 over the wrong
    ones (5 and 1); answer 4 has no verifier and keeps its score:

    >>> verifier_gate([2.0, 5.0, 1.0, 4.0, 3.0], [True, False, False, True, None])
    [7.0, 5.0, 1.0, 9.0, 3.0]
    >>> verifier_gate([2.0, 5.0], [False, False])  # no right answer to protect: unchanged
    [2.0, 5.0]
    """
    if len(judged) != len(correct):
        raise ValueError(f"{len(judged)} rewards for {len(correct)} verifier outcomes")
    verified = [r for r, c in zip(judged, correct, strict=True) if c is not None]
    if True not in correct or False not in correct:
        return list(judged)
    gap = max(verified) - min(verified) + margin
    return [r + gap if c is True else r for r, c in zip(judged, correct, strict=True)]


def gate_stats(judged: Sequence[float], correct: Sequence[bool | None]) -> tuple[int, int]:
    """``(pairs, overridden)``: (right, wrong) pairs in the group, and those the judge scored wrong >= right.

    >>> gate_stats([2.0, 5.0, 1.0, 4.0], [True, False, False, True])
    (4, 2)
    """
    right = [r for r, c in zip(judged, correct, strict=True) if c is True]
    wrong = [r for r, c in zip(judged, correct, strict=True) if c is False]
    return len(right) * len(wrong), sum(w >= r for r in right for w in wrong)
