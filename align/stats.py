"""How sure the report's numbers are: Wilson intervals for accuracies, McNemar's test for changes.

Every stage is evaluated on the same held-out tasks with greedy decoding, so two stages' results
are paired: task i is right or wrong under both. A two-proportion test (or comparing two
intervals) treats them as independent samples and, since most tasks get the same verdict at both
stages, is far too conservative. McNemar's exact test uses only the discordant tasks: ``b`` right
only in the new stage, ``c`` right only in the old one; with no change, each discordant task is
a fair coin, so ``min(b, c)`` is tested against Binomial(b + c, 1/2), two-sided.

Exact arithmetic with :func:`math.comb` (scipy is not a dependency); both are standard textbook
formulas, tested against hand-computed values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); ``(0, 1)`` when ``n == 0``.

    Unlike p +- z*SE it stays inside [0, 1] and is not zero-width at 0/n or n/n.

    >>> [round(x, 4) for x in wilson_interval(5, 10)]
    [0.2366, 0.7634]
    """
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c`` (1.0 when both are 0).

    >>> mcnemar_exact(0, 6), mcnemar_exact(1, 9), mcnemar_exact(3, 3)
    (0.03125, 0.021484375, 1.0)
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedChange:
    """A change of accuracy between two stages on the same tasks."""

    n: int  # tasks both stages were evaluated on
    before: float
    after: float
    gained: int  # b: right after, wrong before
    lost: int  # c: wrong after, right before
    p_value: float

    @property
    def delta(self) -> float:
        return self.after - self.before

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def paired_change(before: Mapping[str, bool], after: Mapping[str, bool]) -> PairedChange:
    """McNemar's exact test over the tasks both stages have a verdict for (task id -> correct)."""
    common = sorted(set(before) & set(after))
    gained = sum(1 for k in common if after[k] and not before[k])
    lost = sum(1 for k in common if before[k] and not after[k])
    n = len(common)
    acc_before = sum(1 for k in common if before[k]) / n if n else 0.0
    acc_after = sum(1 for k in common if after[k]) / n if n else 0.0
    return PairedChange(n, acc_before, acc_after, gained, lost, mcnemar_exact(gained, lost))
