"""Errors from inside an actor, in the user's words: which actor, what it was doing, which recipe key to change.

An exception raised in a Ray actor reaches the driver wrapped (``RayTaskError``, ``ActorDiedError``)
with the actor's traceback inside, 40-odd lines that end in the one that matters. For errors
a recipe key can fix, :func:`explain` returns an :class:`ActorSetupError` (exit 2) that names the
actor, its set-up call and the key; anything else passes through unchanged (a bug should keep
its traceback). Where the same fact is readable before any actor starts, :func:`check_max_model_len`
checks it then.
"""

from __future__ import annotations

import json
from pathlib import Path

from align.errors import AlignError

# (text in the actor's error, what to do). The first match wins.
HINTS: tuple[tuple[str, str], ...] = (
    ("max_model_len", "lower rollout.max_model_len to at most the model's positions (config.json: max_position_embeddings), "
                      "or lower the prompt and rollout.sampling.max_new_tokens so they fit"),
    ("learner.freeze", "correct learner.freeze: each entry is a regular expression searched in the model's "
                       "parameter names (some are shown above), and at least one parameter must still train"),
)  # fmt: skip


class ActorSetupError(AlignError, RuntimeError):
    """An actor failed in a way a recipe key fixes; the message names the actor and the key."""


def _line_with(text: str, needle: str) -> str:
    """The last line of the actor's error that mentions ``needle`` (the traceback's own message)."""
    lines = [l.strip() for l in text.strip().splitlines() if needle in l]
    return lines[-1] if lines else text.strip().splitlines()[-1]


def explain(actor: str, what: str, error: BaseException) -> ActorSetupError | None:
    """The user's message for ``error`` raised by ``actor`` while in ``what``, or None if no hint fits."""
    text = str(error)
    for needle, todo in HINTS:
        if needle in text:
            return ActorSetupError(f"{actor} failed in {what}: {_line_with(text, needle)[:600]}\nTo fix it: {todo}.")
    return None


def check_max_model_len(model_path: str, max_model_len: int) -> None:
    """Refuse ``rollout.max_model_len`` above the model's positions before a vLLM engine starts.

    Reads ``config.json``; silent when the file, ``max_position_embeddings`` or a plain reading of
    it is missing (RoPE scaling or ``model_max_length`` let vLLM allow more): vLLM then decides,
    and :func:`explain` words its error.
    """
    config = Path(model_path) / "config.json"
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    n = cfg.get("max_position_embeddings")
    if not isinstance(n, int) or cfg.get("rope_scaling") or cfg.get("model_max_length"):
        return
    if max_model_len > n:
        raise ActorSetupError(
            f"rollout.max_model_len={max_model_len} is more than the model's {n} positions "
            f"(max_position_embeddings in {config}); set rollout.max_model_len={n} or less"
        )
