"""The ``code`` environment and the sandbox it runs programs in (see README.md)."""

from envs.code.env import CodeEnv, CodeParams
from envs.code.sandbox import SandboxConfig, SandboxPool, SandboxResult, SandboxUnavailable, run_program

__all__ = ["CodeEnv", "CodeParams", "SandboxConfig", "SandboxPool", "SandboxResult", "SandboxUnavailable", "run_program"]
