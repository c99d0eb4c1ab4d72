"""Rollout: vLLM engines serving the policy, and episodes that run environments against it."""
