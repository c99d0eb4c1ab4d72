"""Value checks run on every recipe after pydantic's field checks: what can work, not just what parses.

pydantic checks each field alone (types, simple bounds). What it lets through and a job would
only find out after minutes, or never (a NaN learning rate trains to NaN weights and exits 0):

- non-finite floats anywhere (``.inf``, ``.nan``, ``1e999``), and a YAML boolean given for a
  number (``max_steps: true`` reads as 1);
- sizes that must be positive (the tiny model's, the tokenizer's) and values with a known range
  (``adam_betas`` in [0, 1), ``top_k`` as vLLM takes it, budgets, generated-data shares);
- cross-field facts: heads that divide the hidden size, a layer pattern of known letters,
  lengths that fit the model's positions and the engine's ``max_model_len``, stage recipes that
  exist;
- counts beyond any cluster (:data:`LIMITS`): a typo such as 10^12 learners or 10^30 steps
  should fail in a second, not when a placement group or a tensor of that size is asked for.

Each :class:`Problem` names every key involved; the loader adds where each key was set (file,
command-line override or default). Checks only read the recipe and, for the model's positions,
a local checkpoint's ``config.json``; nothing starts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from align.config.recipes import RecipeError, find_recipe
from align.config.schema import JobBase, PipelineRecipe, RLRecipe

# Upper bounds far above the largest runs align is meant for, so only typos and overflows hit them.
LIMITS: dict[str, int] = {
    "cluster.num_learners": 4096,
    "cluster.num_rollout_engines": 4096,
    "learner.micro_batch_size_per_device": 65536,
    "learner.gradient_accumulation_steps": 65536,
    "grpo.prompts_per_step": 65536,
    "grpo.generations_per_prompt": 4096,
}
MAX_STEPS = 10**9  # any `*max_steps`, `*every_steps`, `warmup_steps`
MAX_TOKENS = 1 << 24  # any length in tokens
MAX_INT = 1 << 62  # any other integer (a seed, a count): must fit a 64-bit tensor
# Letters of a NemotronH layer pattern: Mamba2, attention, MLP, MoE.
LAYER_LETTERS = {"M": "Mamba2", "*": "attention", "-": "MLP", "E": "MoE"}
# TinyModelConfig fields that are sizes (must be >= 1). Fields added later are not judged here.
TINY_SIZES = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
    "mamba_num_heads", "mamba_head_dim", "ssm_state_size", "mamba_n_groups", "mamba_chunk_size", "max_position_embeddings",
)  # fmt: skip


@dataclass(frozen=True)
class Problem:
    """One thing wrong: every dotted key involved (the first is the one to change) and why."""

    keys: tuple[str, ...]
    message: str


def check_recipe(recipe: BaseModel, raw: dict[str, Any]) -> list[Problem]:
    """Every problem of a validated ``recipe``; ``raw`` is the merged YAML it came from."""
    problems = list(_bools_for_numbers(recipe, raw, ""))
    problems += _walk_numbers(recipe.model_dump(), "")
    if isinstance(recipe, JobBase):
        problems += _check_job(recipe)
    if isinstance(recipe, RLRecipe):
        problems += _check_rl(recipe)
    if isinstance(recipe, PipelineRecipe):
        problems += _check_pipeline(recipe)
    return problems


def _bools_for_numbers(model: BaseModel, raw: Any, prefix: str) -> Iterator[Problem]:
    """YAML ``true``/``false`` where a number is expected (pydantic's lax mode reads them as 1/0)."""
    if not isinstance(raw, dict):
        return
    for name in type(model).model_fields:
        if name not in raw:
            continue
        value, given, key = getattr(model, name), raw[name], f"{prefix}{name}"
        if isinstance(given, bool) and isinstance(value, (int, float)) and not isinstance(value, bool):
            yield Problem((key,), f"{key} is a number, got the boolean {str(given).lower()}")
        elif isinstance(value, BaseModel):
            yield from _bools_for_numbers(value, given, f"{key}.")
        elif isinstance(value, (list, tuple)) and isinstance(given, list):
            for i, (v, g) in enumerate(zip(value, given)):
                if isinstance(v, BaseModel):
                    yield from _bools_for_numbers(v, g, f"{key}.{i}.")
                elif isinstance(g, bool) and not isinstance(v, bool):
                    yield Problem((f"{key}.{i}",), f"{key}.{i} is a number, got the boolean {str(g).lower()}")


def _walk_numbers(value: Any, key: str) -> Iterator[Problem]:
    """Non-finite floats and integers too large for any tensor, anywhere in the recipe."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_numbers(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk_numbers(v, f"{key}.{i}")
    elif isinstance(value, float) and not math.isfinite(value):
        yield Problem((key,), f"{key} must be a finite number, got {value}")
    elif isinstance(value, int) and not isinstance(value, bool):
        leaf = key.rsplit(".", 1)[-1]
        if leaf.endswith(("max_steps", "every_steps")) or leaf == "warmup_steps":
            limit, what = MAX_STEPS, "steps"
        elif leaf.startswith("max_") and leaf.endswith(("_len", "_tokens", "_embeddings")):
            limit, what = MAX_TOKENS, "tokens"
        elif key in LIMITS:
            limit, what = LIMITS[key], "(a limit far above any cluster align runs on)"
        else:
            limit, what = MAX_INT, "(it must fit in 64 bits)"
        if abs(value) > limit:
            yield Problem((key,), f"{key}={value} is more than {limit:,} {what}; is it a typo?")


def model_positions(r: JobBase) -> tuple[int, str] | None:
    """The policy's max positions and the key or file it comes from; None when it cannot be known offline."""
    for key, folder in (("init_from", r.init_from), ("model.path", r.model.path)):
        if folder is None:
            continue
        config = Path(folder) / "config.json"
        if not config.is_file():
            # init_from may be written by an earlier stage; a hub id is not readable before the job.
            if key == "init_from":
                continue
            return None
        try:
            n = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
        except (OSError, ValueError):
            return None
        return (int(n), f"{key} ({config})") if isinstance(n, int) else None
    if r.model.path is None:
        return r.model.tiny.max_position_embeddings, "model.tiny.max_position_embeddings"
    return None


def _check_job(r: JobBase) -> Iterator[Problem]:
    tiny = r.model.tiny
    if r.model.path is None and r.init_from is None:
        for name in TINY_SIZES:
            if getattr(tiny, name, 1) < 1:
                yield Problem((f"model.tiny.{name}",), f"model.tiny.{name} is a size and must be at least 1, got {getattr(tiny, name)}")
        if tiny.num_attention_heads >= 1 and tiny.hidden_size % tiny.num_attention_heads:
            yield Problem(("model.tiny.num_attention_heads", "model.tiny.hidden_size"),
                          f"model.tiny.num_attention_heads={tiny.num_attention_heads} must divide model.tiny.hidden_size={tiny.hidden_size}")  # fmt: skip
        if tiny.num_key_value_heads >= 1 and tiny.num_attention_heads % tiny.num_key_value_heads:
            yield Problem(("model.tiny.num_key_value_heads", "model.tiny.num_attention_heads"),
                          f"model.tiny.num_key_value_heads={tiny.num_key_value_heads} must divide model.tiny.num_attention_heads={tiny.num_attention_heads}")  # fmt: skip
        if r.model.arch == "nemotron_h":
            bad = sorted(set(tiny.layers_block_type) - set(LAYER_LETTERS))
            if bad or not tiny.layers_block_type:
                letters = ", ".join(f"{k} ({v})" for k, v in LAYER_LETTERS.items())
                yield Problem(("model.tiny.layers_block_type",),
                              f"model.tiny.layers_block_type={tiny.layers_block_type!r}: " + (f"unknown letters {', '.join(bad)}; " if bad else "empty; ")
                              + f"use one letter per layer from {letters}")  # fmt: skip
    if r.tokenizer.path is None:
        from align.tiny.tokenizer import SPECIAL_TOKENS

        least = 256 + len(SPECIAL_TOKENS)  # the byte alphabet and the special tokens
        if r.tokenizer.vocab_size < least:
            yield Problem(("tokenizer.vocab_size",),
                          f"tokenizer.vocab_size={r.tokenizer.vocab_size}: the tiny tokenizer needs at least {least} "
                          f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens) plus room for merges, e.g. 512")  # fmt: skip
    elif r.tokenizer.vocab_size < 1:
        yield Problem(("tokenizer.vocab_size",), f"tokenizer.vocab_size must be at least 1, got {r.tokenizer.vocab_size}")
    if r.tokenizer.chat_template is not None:
        from align.byom import ChatTemplateError, load_chat_template

        try:
            load_chat_template(r.tokenizer.chat_template)
        except ChatTemplateError as e:
            yield Problem(("tokenizer.chat_template",), str(e))
    for i, beta in enumerate(r.learner.adam_betas):
        if not 0 <= beta < 1:
            yield Problem((f"learner.adam_betas.{i}",), f"learner.adam_betas must each be in [0, 1), got {list(r.learner.adam_betas)}")
    if r.learner.lora is not None:
        if not 0 <= r.learner.lora.dropout < 1:
            yield Problem(("learner.lora.dropout",), f"learner.lora.dropout must be in [0, 1), got {r.learner.lora.dropout}")
        if r.learner.lora.alpha < 1:
            yield Problem(("learner.lora.alpha",), f"learner.lora.alpha must be at least 1, got {r.learner.lora.alpha}")
    if r.learner.on_nonfinite == "skip_step" and (r.learner.zero_stage != 0 or r.learner.precision == "bf16"):
        yield Problem(("learner.on_nonfinite", "learner.zero_stage", "learner.precision"),
                      "learner.on_nonfinite=skip_step needs learner.zero_stage=0 without bf16: elsewhere DeepSpeed holds the "
                      "gradients and a non-finite step cannot be skipped; use learner.on_nonfinite=stop")  # fmt: skip
    section = "grpo" if r.job == "rl" else r.job
    settings = getattr(r, section, None)
    if r.learner.lora is None and getattr(settings, "reference", None) == "lora_disabled" and getattr(settings, "kl_coef", 1) > 0:
        yield Problem((f"{section}.reference", "learner.lora"),
                      "the reference is lora_disabled, but learner.lora is not set: there are no adapters to disable; "
                      "set learner.lora (e.g. learner.lora={r: 16}) or use separate_group")  # fmt: skip
    data = getattr(r, "data", None)  # SFT, DPO, RM (DataJobBase); RL reads tasks from its environments
    gen = data.generated if data is not None else None
    if data is not None and data.path is None and gen is not None:
        for env, share in gen.envs.items():
            if share < 0:
                yield Problem((f"data.generated.envs.{env}",), f"data.generated.envs.{env} is a share and must be >= 0, got {share}")
        if not sum(s for s in gen.envs.values() if s > 0) > 0:
            yield Problem(("data.generated.envs",), f"data.generated.envs: the shares must add up to more than 0, got {gen.envs}")
    positions = model_positions(r)
    if positions is not None:
        n, where = positions
        if r.learner.max_seq_len > n:
            yield Problem(("learner.max_seq_len", where.split(" ")[0]),
                          f"learner.max_seq_len={r.learner.max_seq_len} is more than the model's {n} positions ({where})")  # fmt: skip
        max_new = getattr(settings, "max_new_tokens", None)
        if isinstance(max_new, int) and max_new >= n:
            yield Problem((f"{section}.max_new_tokens", where.split(" ")[0]),
                          f"{section}.max_new_tokens={max_new} leaves no room for a prompt in the model's {n} positions ({where})")  # fmt: skip


def _check_rl(r: RLRecipe) -> Iterator[Problem]:
    s, ro = r.rollout.sampling, r.rollout
    if s.top_k < -1:
        yield Problem(("rollout.sampling.top_k",), f"rollout.sampling.top_k must be -1 (off) or a positive count, got {s.top_k}")
    if s.max_new_tokens >= ro.max_model_len:
        yield Problem(("rollout.sampling.max_new_tokens", "rollout.max_model_len"),
                      f"rollout.sampling.max_new_tokens={s.max_new_tokens} leaves no room for the prompt in rollout.max_model_len={ro.max_model_len}")  # fmt: skip
    if s.max_answer_tokens >= ro.max_model_len:
        yield Problem(("rollout.sampling.max_answer_tokens", "rollout.max_model_len"),
                      f"rollout.sampling.max_answer_tokens={s.max_answer_tokens} does not fit rollout.max_model_len={ro.max_model_len}")  # fmt: skip
    positions = model_positions(r)
    if positions is not None and ro.max_model_len > positions[0]:
        yield Problem(("rollout.max_model_len", positions[1].split(" ")[0]),
                      f"rollout.max_model_len={ro.max_model_len} is more than the model's {positions[0]} positions ({positions[1]})")  # fmt: skip
    if r.grpo.clip_low >= 1:
        yield Problem(("grpo.clip_low",), f"grpo.clip_low={r.grpo.clip_low} must be below 1 (the ratio is clipped at 1 - clip_low)")
    if not r.envs:
        yield Problem(("envs",), "envs is empty: list at least one environment, e.g. envs=[{name: math}]")
    yield from _check_async(r)
    for key in ("budgets", "eval_budgets"):
        for i, b in enumerate(getattr(r.reasoning, key)):
            if b < 1:
                yield Problem((f"reasoning.{key}.{i}",), f"reasoning.{key} must be thinking budgets of at least 1 token, got {getattr(r.reasoning, key)}")


def _check_async(r: RLRecipe) -> Iterator[Problem]:
    """``grpo.mode=async`` needs engines that keep generating while the learners train."""
    if r.grpo.mode != "async":
        return
    c = r.cluster
    if 0 < c.gpus_per_rollout_engine < 1 or r.rollout.weight_sync == "cuda_ipc":
        yield Problem(("grpo.mode", "cluster.gpus_per_rollout_engine", "rollout.weight_sync"),
                      f"grpo.mode=async needs rollout engines apart from the learners, but cluster.gpus_per_rollout_engine="
                      f"{c.gpus_per_rollout_engine:g} / rollout.weight_sync={r.rollout.weight_sync} colocate them on the learners' GPUs "
                      "(engines there sleep while the learners train): give the engines GPUs of their own (cluster.gpus_per_rollout_engine=1), "
                      "or run on CPU (0), or keep grpo.mode=sync")  # fmt: skip
    if r.grpo.off_policy_overlap:
        yield Problem(("grpo.off_policy_overlap", "grpo.mode"),
                      "grpo.off_policy_overlap runs the next step's rollout during the update in sync mode; grpo.mode=async already "
                      "generates continuously: set grpo.off_policy_overlap=false")  # fmt: skip


def _check_pipeline(r: PipelineRecipe) -> Iterator[Problem]:
    for i, stage in enumerate(r.stages):
        try:  # resolved as the pipeline driver resolves it: a shipped name or a path
            find_recipe(stage.recipe)
        except RecipeError as e:
            yield Problem((f"stages.{i}.recipe",), f"stages.{i}.recipe (stage '{stage.name}'): {e}")
    for env, n in r.eval.envs.items():
        if n < 0:
            yield Problem((f"eval.envs.{env}",), f"eval.envs.{env} is a number of tasks and must be >= 0, got {n}")
    for i, b in enumerate(r.eval.budgets):
        if b < 1:
            yield Problem((f"eval.budgets.{i}",), f"eval.budgets must be thinking budgets of at least 1 token, got {r.eval.budgets}")
