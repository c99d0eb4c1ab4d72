"""The ``math`` environment: verifiable math answers (see README.md in this folder)."""

from envs.math.env import MathEnv, MathParams, load_examples
from envs.math.verify import compare, extract_answer, grade, is_equivalent

__all__ = ["MathEnv", "MathParams", "compare", "extract_answer", "grade", "is_equivalent", "load_examples"]
