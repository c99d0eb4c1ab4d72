"""HelpSteer-style rated responses as preference pairs, for a generative reward model.

A HelpSteer row (NVIDIA's HelpSteer / HelpSteer2 columns) rates one response to a prompt on five
attributes, each an integer from 0 to 4::

    {"prompt": "What is 2+2?", "response": "4", "helpfulness": 4, "correctness": 4,
     "coherence": 4, "complexity": 0, "verbosity": 1}

``prompt`` may also be messages. :func:`helpsteer_pairs` turns the responses to one prompt into
preference pairs: every two responses with different ``helpfulness`` (HelpSteer's overall
rating; the other four are kept in ``ratings``), the more helpful one chosen. Equal helpfulness
gives no pair. A GenRM trained on them (``rm.genrm.data_format: helpsteer``) gets the ratings as
its verdict's scores: helpfulness 0..4 is the verdict's 1..5 (:mod:`rewards.genrm.data`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from align.data.errors import DataError, RowRef
from align.data.validate import check_prompt_response

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
MIN_RATING, MAX_RATING = 0, 4


def validate_helpsteer_row(row: Any) -> None:
    """Raise :class:`DataError` naming the field unless ``row`` is a usable HelpSteer row.

    >>> validate_helpsteer_row({"prompt": "q", "response": "a", "helpfulness": 5, "correctness": 4,
    ...                         "coherence": 4, "complexity": 0, "verbosity": 1})
    Traceback (most recent call last):
    ...
    align.data.errors.DataError: field 'helpfulness' is 5, expected an integer rating from 0 to 4 (HelpSteer's scale)
    """
    if not isinstance(row, dict):
        raise DataError(f"the row is a {type(row).__name__}, expected an object")
    missing = [k for k in ("prompt", "response", *ATTRIBUTES) if row.get(k) is None]
    if missing:
        raise DataError(f"missing field {', '.join(map(repr, missing))} (a HelpSteer row has prompt, response and {', '.join(ATTRIBUTES)}; "
                        f"columns present: {', '.join(sorted(row)) or 'none'})")  # fmt: skip
    check_prompt_response(row)
    for name in ATTRIBUTES:
        value = row[name]
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole or not MIN_RATING <= value <= MAX_RATING:
            raise DataError(f"field {name!r} is {value!r}, expected an integer rating from {MIN_RATING} to {MAX_RATING} (HelpSteer's scale)")


def helpsteer_pairs(rows: list[dict[str, Any]], refs: list[RowRef]) -> tuple[list[dict[str, Any]], list[RowRef]]:
    """Conversational preference rows from checked HelpSteer rows, and each pair's ref (its chosen row's).

    >>> def r(resp, h): return {"prompt": "q", "response": resp, **dict.fromkeys(ATTRIBUTES, 2), "helpfulness": h}
    >>> pairs, refs = helpsteer_pairs([r("good", 4), r("ok", 2), r("meh", 2)], [RowRef(0), RowRef(1), RowRef(2)])
    >>> [(p["chosen"][0]["content"], p["rejected"][0]["content"], p["scores"]) for p in pairs]
    [('good', 'ok', [5, 3]), ('good', 'meh', [5, 3])]
    """
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_prompt[json.dumps(row["prompt"], sort_keys=True)].append(i)
    pairs: list[dict[str, Any]] = []
    pair_refs: list[RowRef] = []
    for idx in by_prompt.values():
        for x, i in enumerate(idx):
            for j in idx[x + 1 :]:
                hi, hj = int(rows[i]["helpfulness"]), int(rows[j]["helpfulness"])
                if hi == hj:
                    continue
                c, r = (i, j) if hi > hj else (j, i)
                prompt = rows[c]["prompt"]
                pairs.append({
                    "prompt": [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt,
                    "chosen": [{"role": "assistant", "content": rows[c]["response"]}],
                    "rejected": [{"role": "assistant", "content": rows[r]["response"]}],
                    "scores": [int(rows[c]["helpfulness"]) + 1, int(rows[r]["helpfulness"]) + 1],  # the verdict's 1..5
                    "ratings": [{k: rows[c][k] for k in ATTRIBUTES}, {k: rows[r][k] for k in ATTRIBUTES}],
                })  # fmt: skip
                pair_refs.append(refs[c])
    return pairs, pair_refs
