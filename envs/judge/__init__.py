"""The ``judge`` environment: RL for a generative reward model (see README.md in this folder)."""

from envs.judge.env import JudgeEnv, JudgeParams

__all__ = ["JudgeEnv", "JudgeParams"]
