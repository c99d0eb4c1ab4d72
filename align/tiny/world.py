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
    from envs.registry import make_env

    for name in BUILTIN_ENVS:
        env = make_env(name)
        for task in env.generate(tasks_per_env, seed):
            for message in env.reset(task) + env.demonstrate(task):
                yield message["content"]
            yield json.dumps(task.answer) if not isinstance(task.answer, str) else task.answer
