"""The tiny world's text: what its tokenizer is trained on.

Every built-in environment contributes rendered prompts and worked demonstrations from its
task generator, so the tokenizer's merges fit the tasks the tiny policy will see. Chat markup
is added by the tokenizer's special tokens, not learned from text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

BUILTIN_ENVS = ("math", "code", "tool_use", "instruction_following")


def world_texts(seed: int = 0, tasks_per_env: int = 400) -> Iterator[str]:
    """Prompts, demonstrations and answers of every built-in environment's generated tasks.

    An environment that cannot load is reported and left out: the tokenizer is byte-level, so
    it still encodes that environment's text, only in more tokens.
    """
    import warnings

    from envs.base import task_source
    from envs.registry import make_env

    for name in BUILTIN_ENVS:
        try:
            env = task_source(make_env(name))
        except Exception as e:  # noqa: BLE001 - any plugin failure: report and go on
            warnings.warn(f"tiny-world tokenizer: environment {name!r} unavailable, its text is left out: {e}", stacklevel=2)
            continue
        for task in env.generate(tasks_per_env, seed):
            for message in env.reset(task) + env.demonstrate(task):
                yield message["content"]
            yield json.dumps(task.answer) if not isinstance(task.answer, str) else task.answer
