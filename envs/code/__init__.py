"""The ``code`` environment (see README.md); programs run in the shared sandbox, :mod:`envs.sandbox`."""

from envs.code.env import CodeEnv, CodeParams

__all__ = ["CodeEnv", "CodeParams"]
