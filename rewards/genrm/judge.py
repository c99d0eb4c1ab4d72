"""Running a GenRM: judge prompts -> token ids -> any ``GenerateFn`` (in-process engine or a
RolloutGroup of judge engines) -> verdicts; and the held-out judge metrics.

The judge's prompt is rendered with the judge's own chat template in ``/think`` mode (its
reasoning goes in the think block, the verdict after it) and generation stops at its end-of-turn
token. Only the generated tokens are decoded and parsed (:func:`rewards.genrm.verdict.parse_verdict`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.reasoning import ReasoningMode
from rewards.genrm.verdict import Verdict, judge_messages, parse_verdict
from rollout.chat import ChatTokens, render_prompt_ids
from rollout.types import GenerateFn, GenRequest

THINK = ReasoningMode(thinking=True)
# Written into a judge's folder by `align rm`: how the judge reads responses, so every user of the
# judge (the genrm reward, the win rate) renders its prompts as it was trained.
FORMAT_FILE = "genrm.json"


def write_format(folder: Path, show_thinking: bool) -> None:
    (folder / FORMAT_FILE).write_text(json.dumps({"show_thinking": show_thinking}) + "\n")


def read_show_thinking(folder: str | Path) -> bool:
    """The judge's ``show_thinking`` (False for a folder without :data:`FORMAT_FILE`)."""
    path = Path(folder) / FORMAT_FILE
    return bool(json.loads(path.read_text()).get("show_thinking", False)) if path.is_file() else False


@dataclass(frozen=True)
class JudgeCall:
    """One judge generation: its verdict (``None``: malformed), text, and token counts."""

    verdict: Verdict | None
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Item:
    """One ordered pair to judge: the conversation, then the responses shown as A and as B."""

    prompt: list[dict[str, Any]]
    a: str
    b: str


async def judge(
    items: Sequence[Item], tokenizer: Any, generate: GenerateFn, max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
    show_thinking: bool = False,
) -> list[JudgeCall]:
    """One :class:`JudgeCall` per item, in order (one batch through ``generate``)."""
    if not items:
        return []
    eos = ChatTokens.from_tokenizer(tokenizer).eos_id
    prompts = [render_prompt_ids(tokenizer, judge_messages(it.prompt, it.a, it.b, show_thinking), THINK) for it in items]
    requests = [
        GenRequest(ids, max_new_tokens, temperature=temperature, stop_token_ids=[eos], seed=seed + i, request_id=f"judge:{seed}:{i}")
        for i, ids in enumerate(prompts)
    ]
    outputs = await generate(requests)
    calls = []
    for ids, out in zip(prompts, outputs, strict=True):
        tokens = out.token_ids[:-1] if out.token_ids and out.token_ids[-1] == eos else out.token_ids
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        calls.append(JudgeCall(parse_verdict(text), text, len(ids), len(out.token_ids)))
    return calls


def pair_metrics(chosen_a: Sequence[Verdict | None], chosen_b: Sequence[Verdict | None]) -> dict[str, float]:
    """Held-out judge metrics over N pairs, each judged with chosen as A and with chosen as B.

    - ``accuracy_chosen_a`` / ``accuracy_chosen_b``: share of pairs whose verdict in that order
      prefers the chosen response (a tie or a malformed verdict is wrong);
    - ``accuracy``: the both-orders judgement, the way circular comparison with ``order: both``
      uses it: the chosen response's mean score over its parsed verdicts beats the rejected one's;
    - ``position_bias_rate``: share of pairs (both verdicts parsed) where the same *position*
      won in both orders, i.e. the judge's answer did not follow the responses when they swapped;
    - ``parse_failure_rate``: share of the 2N verdicts that did not parse.

    >>> from rewards.genrm.verdict import Verdict as V
    >>> m = pair_metrics([V(5, 1), V(5, 1), None, V(3, 3)], [V(1, 5), V(5, 2), V(2, 4), V(1, 5)])
    >>> [m[k] for k in ("accuracy_chosen_a", "accuracy_chosen_b", "accuracy", "position_bias_rate", "parse_failure_rate")]
    [0.5, 0.75, 1.0, 0.3333333333333333, 0.125]
    """
    n = len(chosen_a)
    if n == 0 or len(chosen_b) != n:
        raise ValueError(f"pair_metrics needs the same positive number of verdicts in both orders, got {n} and {len(chosen_b)}")
    right = 0
    biased = both = 0
    for va, vb in zip(chosen_a, chosen_b, strict=True):
        good = [v.a for v in (va,) if v] + [v.b for v in (vb,) if v]
        bad = [v.b for v in (va,) if v] + [v.a for v in (vb,) if v]
        right += bool(good) and sum(good) / len(good) > sum(bad) / len(bad)
        if va is not None and vb is not None:
            both += 1
            biased += va.preference != 0 and va.preference == vb.preference
    return {
        "accuracy_chosen_a": sum(1 for v in chosen_a if v and v.preference > 0) / n,
        "accuracy_chosen_b": sum(1 for v in chosen_b if v and v.preference < 0) / n,
        "accuracy": right / n,
        "position_bias_rate": biased / both if both else float("nan"),
        "parse_failure_rate": (sum(v is None for v in chosen_a) + sum(v is None for v in chosen_b)) / (2 * n),
    }
