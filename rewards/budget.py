"""ReasoningBudgetReward: shape thinking to the toggle and the budget (a penalty, never a bonus)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from align.reasoning import round_budget, split_thinking
from rewards.base import RewardInput


class BudgetParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Subtracted when the rollout had to force </think> because the budget ran out.
    forced_close_penalty: float = Field(0.5, ge=0)
    # Subtracted in full at 2x the budget, in proportion below that: min(1, over / budget) * this.
    overrun_penalty: float = Field(0.5, ge=0)
    # Subtracted when thinking ran past the budget at all, forced or not. With a grace window
    # (reasoning.budget_grace_fraction) the overrun is at most a tenth of the budget, so
    # overrun_penalty charges it almost nothing, while the evaluation's budget adherence counts it
    # as a miss. 0: off.
    over_budget_penalty: float = Field(0.0, ge=0)
    # Subtracted when a /no_think trajectory thinks anyway (a non-empty think block).
    no_think_penalty: float = Field(1.0, ge=0)
    # Subtracted from correct budgeted trajectories in proportion to the share of the budget their
    # thinking used: min(1, thinking / budget) * this. 0: off.
    budget_share_penalty: float = Field(0.0, ge=0)


class ReasoningBudgetReward:
    """Penalties for breaking the reasoning controls; 0.0 for a trajectory that keeps them.

    * ``/no_think``: any thinking (``thinking_tokens > 0`` or a non-empty think block in the
      completion) costs ``no_think_penalty``.
    * ``/think`` with a budget: a forced close costs ``forced_close_penalty``; thinking past the
      budget (possible when the rollout does not enforce it) costs up to ``overrun_penalty``;
      any thinking past it, or a forced close, costs ``over_budget_penalty`` (off by default).
      The budget is the ladder step the system turn carried (``round_budget``).
    * ``/think`` with a budget and a correct answer: ``budget_share_penalty`` (off by default)
      costs ``min(1, thinking / budget)`` of it. Among right answers the shorter thinking then
      pays, and each token costs ``1 / budget`` of it, so the pressure is strongest where the
      budget is small. Wrong answers are not charged: a short wrong answer must not beat a
      long one for being short (as L1's length-controlled reward, Aggarwal & Welleck 2025).
    * ``/think`` without a budget: ``None`` (not applicable), so the combiner skips it and the
      trajectory's total is not moved by a rule that does not exist for it.

    Zero rather than a bonus for compliance: a bonus would reward short, thoughtless answers
    in budgeted mode on its own; the correctness reward is what should pay.

    >>> from rewards.testing import trajectory
    >>> ReasoningBudgetReward().score([
    ...     trajectory("<think>2+2=4</think>4", budget=64, thinking_tokens=5),
    ...     trajectory("<think>...</think>4", budget=64, thinking_tokens=64, forced_close=True),
    ...     trajectory("<think>...</think>4", budget=64, thinking_tokens=96),
    ...     trajectory("<think>2+2=4</think>4", thinking=False),
    ...     trajectory("<think></think>4", thinking=False),
    ...     trajectory("<think>2+2=4</think>4"),
    ... ])
    [0.0, -0.5, -0.25, -1.0, 0.0, None]
    >>> ReasoningBudgetReward(BudgetParams(budget_share_penalty=0.4)).score([
    ...     trajectory("<think>2+2=4</think>4", budget=16, thinking_tokens=4, correct=True),
    ...     trajectory("<think>2+2=4</think>4", budget=64, thinking_tokens=4, correct=True),
    ...     trajectory("<think>2+2=4</think>5", budget=16, thinking_tokens=4, correct=False),
    ... ])
    [-0.1, -0.025, 0.0]
    >>> ReasoningBudgetReward(BudgetParams(over_budget_penalty=0.3)).score([
    ...     trajectory("<think>...</think>4", budget=32, thinking_tokens=34),  # closed in the grace window
    ...     trajectory("<think>...</think>4", budget=32, thinking_tokens=32),
    ... ])
    [-0.33125, 0.0]
    """

    name: ClassVar[str] = "reasoning_budget"
    description: ClassVar[str] = "Penalty for forced </think>, thinking over budget, thinking in /no_think mode, and (optionally) budget used."
    Params: ClassVar[type[BaseModel]] = BudgetParams

    def __init__(self, params: BudgetParams | None = None) -> None:
        self.params = params or BudgetParams()

    def _one(self, x: RewardInput) -> float | None:
        p = self.params
        if not x.mode.thinking:
            thought, _ = split_thinking(x.completion)
            thinks = x.thinking_tokens > 0 or bool(thought and thought.strip())
            return -p.no_think_penalty if thinks else 0.0
        if x.mode.budget is None:
            return None
        budget = round_budget(x.mode.budget)
        over = max(0, x.thinking_tokens - budget) / budget
        penalty = (p.forced_close_penalty if x.forced_close else 0.0) + p.overrun_penalty * min(1.0, over)
        if x.thinking_tokens > budget or x.forced_close:
            penalty += p.over_budget_penalty
        if x.correct:
            penalty += p.budget_share_penalty * min(1.0, x.thinking_tokens / budget)
        return -penalty if penalty else 0.0

    def score(self, batch: list[RewardInput]) -> list[float | None]:
        return [self._one(x) for x in batch]
