"""align: post-training and RL alignment for LLMs."""

__version__ = "0.1.0"
