"""The ``chat`` environment: open-ended helpfulness prompts judged by a GenRM (see README.md in this folder)."""

from envs.chat.env import PAIR_KINDS, ChatEnv, ChatParams, pad

__all__ = ["PAIR_KINDS", "ChatEnv", "ChatParams", "pad"]
