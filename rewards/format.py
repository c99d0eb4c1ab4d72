"""FormatReward: is each assistant turn a well-formed think block followed by an answer?"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from align.reasoning import THINK_CLOSE, THINK_OPEN
from rewards.base import RewardInput


class FormatParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The answer after </think> must have at least this many non-space characters.
    min_answer_chars: int = Field(1, ge=1)


def well_formed(text: str, thinking: bool, min_answer_chars: int = 1) -> bool:
    """One closed think block at the very start, then a non-empty answer.

    In ``/no_think`` mode the chat template opens the turn with ``<think></think>`` itself, so
    a turn without any block is also well-formed there (the block may or may not be included in
    the text the rollout hands over). Whether a no-think turn *thinks* is the budget reward's
    business, not this one's.

    >>> well_formed("<think>2+2=4</think>4", thinking=True)
    True
    >>> well_formed("4", thinking=True), well_formed("4", thinking=False)
    (False, True)
    >>> well_formed("<think>a</think>b<think>c</think>d", thinking=True), well_formed("x<think>a</think>4", thinking=True)
    (False, False)
    """
    body = text.strip()
    opens, closes = body.count(THINK_OPEN), body.count(THINK_CLOSE)
    if opens == 0 and closes == 0:
        return not thinking and len(body) >= min_answer_chars
    if opens != 1 or closes != 1 or not body.startswith(THINK_OPEN):
        return False
    answer = body.split(THINK_CLOSE, 1)[1].strip()
    return len(answer) >= min_answer_chars


class FormatReward:
    """1.0 when every policy turn is well-formed (see :func:`well_formed`), else 0.0.

    The policy's turns are the assistant messages after the task's prompt (all of them in a
    multi-turn episode, so each tool call must come after its own think block); with no
    messages, the joined ``completion`` is judged as one turn.

    >>> from rewards.testing import trajectory
    >>> FormatReward().score([
    ...     trajectory("<think>2+2=4</think>\\\\boxed{4}"),
    ...     trajectory("<think>2+2=4</think>"),
    ...     trajectory("<think>2+2=4"),
    ...     trajectory("4", thinking=False),
    ... ])
    [1.0, 0.0, 0.0, 1.0]
    """

    name: ClassVar[str] = "format"
    description: ClassVar[str] = "1 if every turn is one closed <think> block at the start plus a non-empty answer, else 0."
    Params: ClassVar[type[BaseModel]] = FormatParams

    def __init__(self, params: FormatParams | None = None) -> None:
        self.params = params or FormatParams()

    def score(self, batch: list[RewardInput]) -> list[float | None]:
        out: list[float | None] = []
        for x in batch:
            turns = [m["content"] for m in x.messages[len(x.task.prompt) :] if m.get("role") == "assistant"]
            turns = turns or [x.completion]
            ok = all(well_formed(t, x.mode.thinking, self.params.min_answer_chars) for t in turns)
            out.append(1.0 if ok else 0.0)
        return out
