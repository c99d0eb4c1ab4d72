"""The ``instruction_following`` environment: code-checked constraints (see README.md in this folder)."""

from envs.instruction_following.constraints import KINDS, parse_constraints, score
from envs.instruction_following.env import InstructionFollowingEnv, InstructionFollowingParams, load_examples

__all__ = ["KINDS", "InstructionFollowingEnv", "InstructionFollowingParams", "load_examples", "parse_constraints", "score"]
