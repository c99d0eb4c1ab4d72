"""The multi-turn ``tool_use`` environment (see README.md)."""

from envs.tool_use.env import ToolUseEnv, ToolUseParams

__all__ = ["ToolUseEnv", "ToolUseParams"]
