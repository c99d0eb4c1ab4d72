"""From a recipe's ``data`` section to train/eval examples: what the SFT, DPO and RM drivers call.

Two steps, because the tiny world trains its tokenizer on the data's own text in between:

1. :func:`load_splits` -> checked rows for train and eval. ``data.path`` set: that file,
   folder or hub dataset, with ``data.eval_path`` or a seeded ``data.eval_fraction`` holdout
   for eval. Otherwise ``data.generated``: the environments' generators (``num_eval`` for eval).
2. :func:`prepare_data` -> tokenized examples. For SFT the reasoning mix (``data.reasoning``)
   is applied to train rows first; eval rows stay as they are, so eval loss stays comparable
   across recipes with different mixes.

``stats`` gathers the counts a driver logs: rows kept and skipped, truncations, the mix.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from align.config.schema import DataConfig
from align.data.generated import generated_rows
from align.data.errors import DataError, RowRef
from align.data.loading import EVAL_SPLITS, load_checked_rows_with_refs, train_eval_split
from align.data.reasoning_mix import apply_reasoning_mix
from align.data.tokenize import Tokenized, tokenize_rows
from align.data.helpsteer import helpsteer_pairs, validate_helpsteer_row
from align.data.validate import validate_attribute_row, validate_preference_row, validate_sft_row

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# helpsteer: HelpSteer-rated responses, loaded as the preference pairs they give (align/data/helpsteer.py).
RowKind = Literal["sft", "preference", "attributes", "helpsteer"]


@dataclass
class RowSplits:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    stats: dict[str, int] = field(default_factory=dict)
    # Where each row is in its file (None for generated rows), so later errors use the file's numbers.
    train_refs: list[RowRef] | None = None
    eval_refs: list[RowRef] | None = None


@dataclass
class PreparedData:
    """Tokenized train and eval sets (``.examples``, with their source ``.rows``) and the counts to log."""

    train: Tokenized
    eval: Tokenized
    stats: dict[str, int] = field(default_factory=dict)


def load_splits(cfg: DataConfig, kind: RowKind, seed: int, attribute_names: Sequence[str] | None = None) -> RowSplits:
    """Checked train and eval rows of ``kind`` from ``cfg`` (see the module docstring)."""
    if cfg.path is None:
        if kind in ("attributes", "helpsteer"):
            raise DataError("generated data has no attribute ratings; set data.path to a rated data set")
        assert cfg.generated is not None  # DataConfig requires path or generated
        train, evals = generated_rows(cfg.generated, kind)
        return RowSplits(train, evals, {"train_rows": len(train), "eval_rows": len(evals), "bad_rows_skipped": 0})
    check = {
        "sft": validate_sft_row,
        "preference": validate_preference_row,
        "attributes": functools.partial(validate_attribute_row, attribute_names=attribute_names),
        "helpsteer": validate_helpsteer_row,
    }[kind]
    rows, refs, skipped = load_checked_rows_with_refs(cfg.path, check, split=cfg.split, on_bad_row=cfg.on_bad_row)
    file_rows = len(rows)  # usable rows of data.path (HelpSteer: rated responses, before pairing)
    if kind == "helpsteer":  # split pairs, not rated rows: both responses of a pair stay on one side
        rows, refs = helpsteer_pairs(rows, refs)
    if cfg.eval_path is not None:
        evals, eval_refs, eval_skipped = load_checked_rows_with_refs(cfg.eval_path, check, split=EVAL_SPLITS, on_bad_row=cfg.on_bad_row)
        if kind == "helpsteer":
            evals, eval_refs = helpsteer_pairs(evals, eval_refs)
        skipped += eval_skipped
        train, train_refs = rows, refs
    else:
        train_pairs, eval_pairs = train_eval_split(list(zip(rows, refs)), cfg.eval_fraction, seed)
        train, train_refs = [r for r, _ in train_pairs], [ref for _, ref in train_pairs]
        evals, eval_refs = [r for r, _ in eval_pairs], [ref for _, ref in eval_pairs]
    if kind == "helpsteer" and not train:
        raise DataError(f"{cfg.path}: no preference pairs for training: a pair needs two responses to the same prompt with different helpfulness")
    if not train:
        what = f"all {skipped} rows were bad and skipped (data.on_bad_row=skip)" if skipped else "it has no rows"
        raise DataError(f"{cfg.path}: no usable training rows: {what}. Point data.path at a file with {kind} rows")
    stats = {"file_rows": file_rows, "train_rows": len(train), "eval_rows": len(evals), "bad_rows_skipped": skipped}
    return RowSplits(train, evals, stats, train_refs, eval_refs)


def prepare_data(
    cfg: DataConfig,
    kind: RowKind,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_len: int,
    seed: int,
    *,
    attribute_names: Sequence[str] = (),
    rows: RowSplits | None = None,
) -> PreparedData:
    """Tokenized train/eval examples of ``kind``; ``rows`` reuses splits already loaded for the tokenizer."""
    splits = rows if rows is not None else load_splits(cfg, kind, seed, attribute_names or None)
    stats = dict(splits.stats)
    train_rows = splits.train
    if kind == "sft":
        train_rows, mix = apply_reasoning_mix(train_rows, cfg.reasoning, tokenizer, seed)
        stats.update(mix)
    source = cfg.path or "generated rows"
    common = dict(attribute_names=attribute_names, on_bad_row=cfg.on_bad_row)
    train = tokenize_rows(train_rows, kind, tokenizer, max_seq_len, source=f"{source} (train)", refs=splits.train_refs, **common)
    evals = tokenize_rows(splits.eval, kind, tokenizer, max_seq_len, source=f"{cfg.eval_path or source} (eval)", refs=splits.eval_refs, **common)
    if not train.examples:
        raise DataError(f"{source}: no usable training rows: all {train.num_skipped} were skipped at tokenization "
                        f"(learner.max_seq_len={max_seq_len}); fix the rows or raise learner.max_seq_len")  # fmt: skip
    stats["bad_rows_skipped"] = stats.get("bad_rows_skipped", 0) + train.num_skipped + evals.num_skipped
    stats["truncated_to_max_seq_len"] = train.num_truncated + evals.num_truncated
    stats["train_examples"], stats["eval_examples"] = len(train.examples), len(evals.examples)
    return PreparedData(train, evals, stats)


def iter_texts(rows: Sequence[dict[str, Any]]) -> Iterator[str]:
    """Every string a row holds in its messages, prompt or responses: text to train a tokenizer on."""
    for row in rows:
        for key in ("messages", "prompt", "chosen", "rejected", "response"):
            value = row.get(key)
            if isinstance(value, str):
                yield value
            elif isinstance(value, list):
                yield from (m["content"] for m in value if isinstance(m, dict) and isinstance(m.get("content"), str))
