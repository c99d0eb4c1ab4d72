"""Environments: plugins that pose tasks and score trajectories (see envs/base.py)."""
