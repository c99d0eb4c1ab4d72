"""Data for SFT, DPO and reward models: loading, checks, reasoning-control transforms, tokens, batches.

Modules, in the order data flows through them:
``loading`` / ``generated`` (rows) -> ``validate`` (checks) -> ``reasoning_mix`` (SFT transforms)
-> ``tokenize`` (ids and labels) -> ``batching`` (padding, batch plan, sharding); ``build``
strings them together from a recipe's ``data`` section.
"""

from align.data.batching import BatchPlan, pad_batch, shard_batch
from align.data.build import PreparedData, RowKind, RowSplits, iter_texts, load_splits, prepare_data
from align.data.errors import DataError, OnBadRow, check_rows
from align.data.generated import generated_rows, split_counts
from align.data.loading import EVAL_SPLITS, load_checked_rows, load_rows, train_eval_split
from align.data.reasoning_mix import apply_reasoning_mix, has_thinking, strip_thinking, truncate_thinking, truncation_budgets
from align.data.tokenize import (
    IGNORE_INDEX,
    Example,
    Tokenized,
    example_lengths,
    tokenize_attributes,
    tokenize_pair,
    tokenize_rows,
    tokenize_sft,
)
from align.data.validate import pair_parts, validate_attribute_row, validate_preference_row, validate_sft_row

__all__ = [
    "EVAL_SPLITS",
    "IGNORE_INDEX",
    "BatchPlan",
    "DataError",
    "Example",
    "OnBadRow",
    "PreparedData",
    "RowKind",
    "RowSplits",
    "Tokenized",
    "apply_reasoning_mix",
    "check_rows",
    "example_lengths",
    "generated_rows",
    "has_thinking",
    "iter_texts",
    "load_checked_rows",
    "load_rows",
    "load_splits",
    "pad_batch",
    "pair_parts",
    "prepare_data",
    "shard_batch",
    "split_counts",
    "strip_thinking",
    "tokenize_attributes",
    "tokenize_pair",
    "tokenize_rows",
    "tokenize_sft",
    "train_eval_split",
    "truncate_thinking",
    "truncation_budgets",
    "validate_attribute_row",
    "validate_preference_row",
    "validate_sft_row",
]
