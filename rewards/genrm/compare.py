"""Circular comparison: G judge calls per group of G responses, and verdicts -> per-response rewards.

Response ``i`` is compared with response ``i+1 mod G`` (G pairs; for G = 2 that is the pair in
both orders), so every response meets two neighbours. Order per pair:

- ``both``: each pair is judged as (A=i, B=j) and (A=j, B=i) (2G calls); a position bias of the
  judge cancels in the average;
- ``random``: one order per pair, drawn from a seeded generator (G calls).

Aggregation (:func:`aggregate`): a response's quality is the mean of the scores it got over every
parsed verdict it appears in. A comparison whose verdict did not parse contributes nothing (it is
counted); a response left with no parsed verdict is a *failed* sample: it gets the mean quality
of the group's scored responses, i.e. a zero advantage, so a judge failure neither rewards nor
punishes it (NeMo-Gym's genrm_compare uses a fixed default score instead, which is not neutral).

Length control (Nemotron 3 Nano's RLHF, optional, both 0 by default), on the qualities:

- group-relative length penalty: ``- length_penalty * (L_i - mean L) / mean L``, zero-centred
  over the group, so it moves rewards within the group and not their mean;
- quality-gated conciseness bonus: the shortest response among the group's top-quality ones (within
  ``top_quality_margin`` of the best) gets ``+concise_bonus``, only if that top quality is at least
  ``min_quality_for_bonus``: short wins only among answers that are already good.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from rewards.genrm.verdict import Verdict


@dataclass(frozen=True)
class Comparison:
    """One judge call: response ``a`` shown as A, response ``b`` as B (indices in the group)."""

    a: int
    b: int


def circular_pairs(group_size: int) -> list[tuple[int, int]]:
    """``(i, i+1 mod G)`` for every i.

    >>> circular_pairs(4)
    [(0, 1), (1, 2), (2, 3), (3, 0)]
    >>> circular_pairs(2)
    [(0, 1), (1, 0)]
    """
    if group_size < 2:
        raise ValueError(f"circular comparison needs at least 2 responses, got {group_size}")
    return [(i, (i + 1) % group_size) for i in range(group_size)]


def comparisons(group_size: int, order: str, rng: random.Random | None = None) -> list[Comparison]:
    """The judge calls for one group. ``order``: ``both`` or ``random`` (needs ``rng``).

    For G = 2 the circular pairs are already (0, 1) and (1, 0): ``both`` does not double them.

    >>> comparisons(3, "both")
    [Comparison(a=0, b=1), Comparison(a=1, b=0), Comparison(a=1, b=2), Comparison(a=2, b=1), Comparison(a=2, b=0), Comparison(a=0, b=2)]
    >>> len(comparisons(4, "random", random.Random(0)))
    4
    """
    pairs = circular_pairs(group_size)
    if order == "both":
        if group_size == 2:
            return [Comparison(i, j) for i, j in pairs]
        return [c for i, j in pairs for c in (Comparison(i, j), Comparison(j, i))]
    if order == "random":
        if rng is None:
            raise ValueError("order=random needs a seeded rng")
        return [Comparison(i, j) if rng.random() < 0.5 else Comparison(j, i) for i, j in pairs]
    raise ValueError(f"unknown comparison order {order!r}; expected both or random")


class LengthControl(BaseModel):
    """Nemotron 3 Nano's length shaping of GenRM rewards (0: off)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    length_penalty: float = Field(0.0, ge=0)
    concise_bonus: float = Field(0.0, ge=0)
    top_quality_margin: float = Field(0.0, ge=0)
    min_quality_for_bonus: float = Field(4.0, ge=0)


@dataclass
class GroupScores:
    """Per-response rewards of one group, and what went into them."""

    rewards: list[float]
    quality: list[float | None]  # mean judge score; None: no verdict parsed (a failed sample)
    failed: list[bool]
    parse_failures: int  # comparisons whose verdict did not parse
    calls: int
    bonus: list[float] = field(default_factory=list)


def aggregate(
    group_size: int,
    calls: Sequence[Comparison],
    verdicts: Sequence[Verdict | None],
    lengths: Sequence[int] | None = None,
    length: LengthControl | None = None,
) -> GroupScores:
    """Verdicts (``None``: malformed) of ``calls`` -> per-response rewards (see the module docstring).

    >>> calls = comparisons(3, "both")
    >>> s = aggregate(3, calls, [Verdict(5, 1), Verdict(1, 5), None, None, Verdict(2, 4), Verdict(4, 2)])
    >>> s.rewards, s.failed, s.parse_failures
    ([4.5, 1.0, 2.0], [False, False, False], 2)
    """
    if len(calls) != len(verdicts):
        raise ValueError(f"{len(verdicts)} verdicts for {len(calls)} comparisons")
    scores: list[list[int]] = [[] for _ in range(group_size)]
    failures = 0
    for c, v in zip(calls, verdicts, strict=True):
        if v is None:
            failures += 1
            continue
        scores[c.a].append(v.a)
        scores[c.b].append(v.b)
    quality: list[float | None] = [sum(s) / len(s) if s else None for s in scores]
    scored = [q for q in quality if q is not None]
    neutral = sum(scored) / len(scored) if scored else 0.0
    rewards = [neutral if q is None else q for q in quality]
    bonus = [0.0] * group_size
    if length is not None and lengths is not None:
        bonus = length_terms(quality, lengths, length)
        rewards = [r + b for r, b in zip(rewards, bonus, strict=True)]
    return GroupScores(rewards, quality, [q is None for q in quality], failures, len(calls), bonus)


def length_terms(quality: Sequence[float | None], lengths: Sequence[int], cfg: LengthControl) -> list[float]:
    """The length penalty plus the conciseness bonus of each response (failed samples get neither).

    >>> cfg = LengthControl(length_penalty=0.5, concise_bonus=1.0)
    >>> length_terms([5.0, 5.0, 2.0, None], [10, 20, 30, 40], cfg)
    [1.25, 0.0, -0.25, 0.0]
    """
    ok = [i for i, q in enumerate(quality) if q is not None]
    out = [0.0] * len(quality)
    if not ok:
        return out
    mean_len = sum(lengths[i] for i in ok) / len(ok)
    if cfg.length_penalty and mean_len > 0:
        for i in ok:
            out[i] -= cfg.length_penalty * (lengths[i] - mean_len) / mean_len
    best = max(quality[i] for i in ok)  # type: ignore[type-var]
    if cfg.concise_bonus and best >= cfg.min_quality_for_bonus:  # type: ignore[operator]
        top = [i for i in ok if quality[i] >= best - cfg.top_quality_margin]  # type: ignore[operator]
        shortest = min(top, key=lambda i: (lengths[i], i))
        out[shortest] += cfg.concise_bonus
    return out
