"""LengthReward: DAPO's soft overlong punishment (Yu et al., 2025, eq. 13)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from rewards.base import RewardInput


class LengthParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The last buffer_tokens before the cap are the soft zone where the penalty ramps up.
    buffer_tokens: int = Field(32, ge=1)
    # The cap; null: each trajectory's own max_new_tokens (what the rollout used).
    max_new_tokens: int | None = Field(None, ge=1)
    # The penalty at and beyond the cap.
    penalty: float = Field(1.0, ge=0)


class LengthReward:
    """0 up to ``max_new_tokens - buffer``, then a linear ramp to ``-penalty`` at the cap.

    A truncated completion gets the full penalty. ``None`` when no cap is known (neither the
    params nor the trajectory say), since "too long" then means nothing. A buffer larger than
    the cap is shrunk to the cap.

    >>> from rewards.testing import trajectory
    >>> LengthReward(LengthParams(buffer_tokens=20)).score([
    ...     trajectory("short", completion_tokens=50, max_new_tokens=100),
    ...     trajectory("longer", completion_tokens=90, max_new_tokens=100),
    ...     trajectory("cut", completion_tokens=100, max_new_tokens=100, truncated=True),
    ...     trajectory("no cap", completion_tokens=100),
    ... ])
    [0.0, -0.5, -1.0, None]
    """

    name: ClassVar[str] = "length"
    description: ClassVar[str] = "DAPO soft overlong penalty: a ramp to -1 over the last buffer_tokens before max_new_tokens."
    Params: ClassVar[type[BaseModel]] = LengthParams

    def __init__(self, params: LengthParams | None = None) -> None:
        self.params = params or LengthParams()

    def _one(self, x: RewardInput) -> float | None:
        cap = self.params.max_new_tokens or x.max_new_tokens
        if cap <= 0:
            return None
        if x.truncated or x.completion_tokens >= cap:
            return -self.params.penalty
        buffer = min(self.params.buffer_tokens, cap)
        free = cap - buffer
        if x.completion_tokens <= free:
            return 0.0
        return -self.params.penalty * (x.completion_tokens - free) / buffer

    def score(self, batch: list[RewardInput]) -> list[float | None]:
        return [self._one(x) for x in batch]
