"""rollout.chat's doctests: one chat_template_kwargs for rollouts and the reward model (no budget: no variable)."""

from __future__ import annotations

import doctest

import rollout.chat


def test_chat_doctests() -> None:
    result = doctest.testmod(rollout.chat)
    assert result.attempted >= 1 and result.failed == 0
