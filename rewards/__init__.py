"""Reward functions: plugins that score finished trajectories (see rewards/base.py)."""
