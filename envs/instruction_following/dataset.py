"""IFEval-style rows as ``instruction_following`` tasks.

Fields (map others with ``columns``, see :mod:`envs.public_data`): ``prompt``;
``instruction_id_list`` and ``kwargs`` (one dict per instruction, as google/IFEval); ``id``
(IFEval: ``key``); optionally ``response``, a reference answer that ``align envs test --data``
checks against the row's own constraints. ``None`` values in ``kwargs`` are dropped (a dataset
read through ``datasets`` fills every key of the union with ``None``).

The instruction ids this environment checks, and the constraint each becomes:

=====================================  ======================================================
``length_constraints:number_words``     ``word_count`` (relation ``at least`` N: N or more;
                                        ``less than`` N: N-1 or fewer)
``keywords:existence``                  ``include_keywords``
``keywords:forbidden_words``            ``forbidden_words``
``detectable_format:json_format``       ``json_format``
``detectable_format:number_bullet_lists`` ``bullet_count``
``punctuation:no_comma``                ``no_commas``
``change_case:english_lowercase``       ``lowercase``
``change_case:english_capital``         ``uppercase``
``startend:end_checker``                ``ends_with`` (also ignores a final ``.``/``!``)
``startend:quotation``                  ``quoted``
=====================================  ======================================================

Any other id is unsupported: loading names every unsupported id and the rows that use it in
one error (or skips those rows with ``on_bad_row=skip``), rather than training on a subset of a
row's instructions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from align.data.errors import DataError
from envs.base import Task
from envs.instruction_following.constraints import parse_constraints
from envs.rows import prompt_messages

FIELDS: tuple[str, ...] = ("id", "key", "prompt", "instruction_id_list", "kwargs", "response")


def _word_count(kw: dict[str, Any]) -> dict[str, Any]:
    n, relation = kw["num_words"], kw["relation"]
    if relation == "at least":
        return {"kind": "word_count", "min_words": n}
    if relation == "less than":
        return {"kind": "word_count", "max_words": max(n - 1, 0)}
    raise ValueError(f"relation must be 'at least' or 'less than', got {relation!r}")


# IFEval instruction id -> its kwargs as one of envs.instruction_following.constraints' dicts.
IFEVAL: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "length_constraints:number_words": _word_count,
    "keywords:existence": lambda kw: {"kind": "include_keywords", "keywords": kw["keywords"]},
    "keywords:forbidden_words": lambda kw: {"kind": "forbidden_words", "words": kw["forbidden_words"]},
    "detectable_format:json_format": lambda kw: {"kind": "json_format"},
    "detectable_format:number_bullet_lists": lambda kw: {"kind": "bullet_count", "count": kw["num_bullets"]},
    "punctuation:no_comma": lambda kw: {"kind": "no_commas"},
    "change_case:english_lowercase": lambda kw: {"kind": "lowercase"},
    "change_case:english_capital": lambda kw: {"kind": "uppercase"},
    "startend:end_checker": lambda kw: {"kind": "ends_with", "phrase": kw["end_phrase"]},
    "startend:quotation": lambda kw: {"kind": "quoted"},
}


def _ids(row: dict[str, Any]) -> list[str]:
    ids = row.get("instruction_id_list")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise DataError(f"field 'instruction_id_list': expected a non-empty list of instruction ids, got {ids!r:.80}")
    return ids


def check_all(rows: Sequence[dict[str, Any] | None], lines: Sequence[int | None] | None, source: str) -> None:
    """One error naming every unsupported instruction id and where it is used (rows that are not
    objects, or have no id list, are left to the per-row check)."""
    where: dict[str, list[str]] = {}
    for i, row in enumerate(rows):
        ids = row.get("instruction_id_list") if row is not None else None
        for iid in ids if isinstance(ids, list) else []:
            if isinstance(iid, str) and iid not in IFEVAL:
                where.setdefault(iid, []).append(f"line {lines[i]}" if lines and lines[i] is not None else f"row {i}")
    if where:
        listed = "; ".join(f"{iid} ({', '.join(places)})" for iid, places in sorted(where.items()))
        raise DataError(
            f"{source}: unsupported instruction ids: {listed}. Supported: {', '.join(IFEVAL)}. "
            "Remove those rows, or set on_bad_row=skip to skip them"
        )


def constraints_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's instructions as constraint dicts (validated by the environment's models)."""
    ids = _ids(row)
    kwargs = row.get("kwargs")
    if kwargs is None:
        kwargs = [{}] * len(ids)
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) or k is None for k in kwargs):
        raise DataError(f"field 'kwargs': expected a list of {len(ids)} dicts (one per instruction id), got {kwargs!r:.80}")
    out = []
    for iid, kw in zip(ids, kwargs):
        if iid not in IFEVAL:
            raise DataError(f"field 'instruction_id_list': unsupported instruction id {iid!r}; supported: {', '.join(IFEVAL)}")
        present = {k: v for k, v in (kw or {}).items() if v is not None}
        try:
            out.append(IFEVAL[iid](present))
        except KeyError as e:
            raise DataError(f"field 'kwargs': {iid} needs {e.args[0]!r} (got {sorted(present)})") from None
        except ValueError as e:
            raise DataError(f"field 'kwargs': {iid}: {e}") from None
    try:
        parse_constraints(out)
    except ValidationError as e:
        raise DataError(f"field 'kwargs': {e.errors()[0]['msg']} ({e.errors()[0]['loc']})") from None
    return out


def to_task(row: dict[str, Any], index: int) -> Task:
    """One IFEval-style row as an ``instruction_following`` task (reference response kept as its demonstration)."""
    prompt = prompt_messages(row, ("prompt",))
    constraints = constraints_of(row)
    meta: dict[str, Any] = {"ifeval_ids": _ids(row)}
    response = row.get("response")
    if isinstance(response, str) and response.strip():
        meta["demonstration"] = response
    tid = row.get("id") if row.get("id") is not None else row.get("key")
    return Task(id=str(tid if tid is not None else f"if-{index}"), env="instruction_following", prompt=prompt, answer=constraints, meta=meta)
