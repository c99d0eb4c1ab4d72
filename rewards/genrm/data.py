"""Judgement SFT data from preference pairs: (prompt, A, B) -> short reasoning + verdict, both orders.

Every pair gives two rows, chosen shown as A and chosen shown as B, so the judge is trained
without a favourite position. When the judge reads answers only, its reasoning first works the
question out, with the chosen response's own thinking when it has some (a judge that cannot solve
the task cannot tell a wrong answer from a right one; the tiny judge with only "B is wrong." as
reasoning stayed at chance on wrong-vs-right pairs), then says which answer is worse and why.
When it reads the responses' thinking too (``show_thinking``), it says only which answer is worse
and why: on the tiny world, restating the chosen trace then cost accuracy (both orders 0.529 with
it, 0.612 without, 242 held-out pairs). The target scores say
how much worse the rejected answer is,
where the row says why (``pair_kind``, written by task families that know it, e.g. ``chat``):

- ``padded`` (the chosen answer plus filler): 5 vs 3, "B adds filler.";
- ``wrong``: 5 vs 1, "B is wrong.";
- no kind (a pair from a file says which is better, not why): 5 vs 1, "B is worse.";
- rated responses (``scores``, from HelpSteer rows, :mod:`align.data.helpsteer`): the ratings, "B is less helpful.".
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from align.reasoning import split_thinking
from rewards.genrm.verdict import Verdict, judge_messages, judgement

PADDED, WORSE = Verdict(5, 3), Verdict(5, 1)


def response_text(response: list[dict[str, Any]] | str) -> str:
    """A response (a pair's chosen or rejected side: messages or plain text) as one text: its assistant turns."""
    if isinstance(response, str):
        return response
    return "\n".join(m["content"] for m in response if m["role"] == "assistant")


def pair_label(kind: str | None) -> tuple[str, Verdict]:
    """(why the rejected answer is worse, the verdict with chosen as A) for a pair of ``kind``.

    >>> pair_label("padded"), pair_label(None)
    (('adds filler', Verdict(a=5, b=3)), ('is worse', Verdict(a=5, b=1)))
    """
    if kind == "padded":
        return "adds filler", PADDED
    return ("is wrong" if kind == "wrong" else "is worse"), WORSE


def kept_pairs(kinds: list[str | None], shares: dict[str, float], seed: int) -> list[int]:
    """Indices of the pairs kept when only ``shares[kind]`` of each named kind stays (seeded, in order).

    On the tiny world the judge gets padded-vs-concise pairs right from the start and loses only on
    wrong-vs-right ones; keeping a quarter of the padded pairs gives those steps to the wrong ones.

    >>> kinds = ["padded"] * 8 + ["wrong", None]
    >>> keep = kept_pairs(kinds, {"padded": 0.25}, seed=0)
    >>> [kinds[i] for i in keep].count("padded"), keep[-2:], keep == sorted(keep)
    (2, [8, 9], True)
    """
    drop: set[int] = set()
    for kind, share in shares.items():
        idx = [i for i, k in enumerate(kinds) if k == kind]
        kept = set(random.Random(f"genrm-pairs:{seed}:{kind}").sample(idx, round(share * len(idx))))
        drop |= set(idx) - kept
    return [i for i in range(len(kinds)) if i not in drop]


def judgement_rows(rows: Iterable[dict[str, Any]], show_thinking: bool = False) -> list[dict[str, Any]]:
    """SFT rows (``messages``) teaching the judge, two per preference row (``order``: ``chosen_a`` / ``chosen_b``).

    Each row keeps the pair's ``env`` and ``id`` (when present) and its ``label``: +1 when the
    better answer is A, -1 when it is B. ``show_thinking``: the judge reads the responses' thinking
    too (:func:`rewards.genrm.verdict.shown`).
    """
    out = []
    for row in rows:
        chosen, rejected = response_text(row["chosen"]), response_text(row["rejected"])
        why, verdict = pair_label(row.get("pair_kind"))
        if row.get("scores"):  # rated responses (HelpSteer): the ratings are the verdict
            why, verdict = "is less helpful", Verdict(*row["scores"])
        # The judge works the question out only when it cannot read the responses' own work.
        trace = None if show_thinking else split_thinking(chosen)[0]
        lead = f"{trace}. " if trace else ""
        for order, a, b, v, worse in (("chosen_a", chosen, rejected, verdict, "B"), ("chosen_b", rejected, chosen, verdict.swapped(), "A")):
            messages = [*judge_messages(row["prompt"], a, b, show_thinking), {"role": "assistant", "content": judgement(f"{lead}{worse} {why}.", v)}]
            extra = {k: row[k] for k in ("env", "id") if k in row}
            out.append({"messages": messages, "order": order, "label": v.preference, **extra})
    return out
