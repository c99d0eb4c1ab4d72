"""Malformed recipes and overrides through the CLI: each exits 2 naming the key, none is accepted.

Every case from issue 23 is here, plus more of the same kinds. A case is a recipe (a shipped
name, or a file written from ``FILES``), its overrides and a string the error must contain (the
key, or the file for errors that belong to the file). ``ACCEPTED`` are near misses that must
still load (vLLM's ``top_k=-1``, an MoE layer letter, a list item edited in place).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from align.cli import main
from align.config import load_recipe

SFT, DPO, RM, RL, PIPE = "tiny-sft", "tiny-dpo", "tiny-rm", "nano3-multienv-tiny", "tiny"
# Recipe files the cases write: name -> bytes.
FILES: dict[str, bytes] = {
    "dup-keys.yaml": b"job: sft\nlearner:\n  lr: 1.0e-3\n  lr: 2.0e-3\n",
    "dup-top.yaml": b"job: sft\nseed: 1\nseed: 2\n",
    "latin1.yaml": b"job: sft\ndescription: caf\xe9 au lait\n",
    "missing-stage.yaml": b"job: pipeline\nstages:\n  - {name: sft, recipe: tiny-sft}\n  - {name: rl, recipe: no-such-recipe}\n",
    "list.yaml": b"- job: sft\n",
    "bad-yaml.yaml": b"job: sft\nlearner: {lr: [\n",
}

# (recipe, overrides, what the message must name)
CASES: list[tuple[str, list[str], str]] = [
    # --- issue 23, as listed
    (SFT, ["tokenizer.vocab_size=0"], "tokenizer.vocab_size"),
    (SFT, ["tokenizer.vocab_size=-5"], "tokenizer.vocab_size"),
    (SFT, ["model.tiny.hidden_size=0"], "model.tiny.hidden_size"),
    (SFT, ["model.tiny.num_attention_heads=3"], "model.tiny.num_attention_heads"),
    (SFT, ["model.tiny.layers_block_type=XYZ"], "model.tiny.layers_block_type"),
    (SFT, ["learner.lr=.inf"], "learner.lr"),
    (SFT, ["learner.max_grad_norm=.inf"], "learner.max_grad_norm"),
    (RL, ["rollout.sampling.temperature=.inf"], "rollout.sampling.temperature"),
    (RL, ["rewards=[{name: length, weight: .nan}]"], "rewards.0.weight"),
    (SFT, ["learner.adam_betas=[1.5, 2.0]"], "learner.adam_betas"),
    (RL, ["rollout.sampling.top_k=-5"], "rollout.sampling.top_k"),
    (RL, ["reasoning.eval_budgets=[-1, 0]"], "reasoning.eval_budgets"),
    (SFT, ["data.generated.envs={math: -1.0}"], "data.generated.envs.math"),
    (SFT, ["data.generated.envs={math: 0.0}"], "data.generated.envs"),
    ("missing-stage.yaml", [], "stages.1.recipe"),
    (PIPE, ["stages.0.recipe=no-such-recipe"], "stages.0.recipe"),
    (RL, ["rollout.max_model_len=64", "rollout.sampling.max_new_tokens=5000"], "rollout.max_model_len"),
    (SFT, ["learner.max_seq_len=100000"], "learner.max_seq_len"),
    (SFT, ["cluster.num_learners=1000000000000"], "cluster.num_learners"),
    (SFT, ["learner.micro_batch_size_per_device=100000000000000000000"], "learner.micro_batch_size_per_device"),
    (SFT, ["sft.max_steps=1000000000000000000000000000000"], "sft.max_steps"),
    (SFT, ["sft.max_steps=true"], "sft.max_steps"),
    ("dup-keys.yaml", [], "'lr' is given twice"),
    ("latin1.yaml", [], "latin1.yaml: not UTF-8"),
    (RL, ["envs.0.weight=.nan"], "envs.0.weight"),
    # --- model and tokenizer
    (SFT, ["tokenizer.vocab_size=100"], "tokenizer.vocab_size"),
    (SFT, ["tokenizer.vocab_size=true"], "tokenizer.vocab_size"),
    (SFT, ["model.tiny.layers_block_type="], "model.tiny.layers_block_type"),
    (SFT, ["model.tiny.layers_block_type=M*-X"], "model.tiny.layers_block_type"),
    (SFT, ["model.tiny.num_key_value_heads=3"], "model.tiny.num_key_value_heads"),
    (SFT, ["model.tiny.max_position_embeddings=0"], "model.tiny.max_position_embeddings"),
    (SFT, ["model.tiny.intermediate_size=-1"], "model.tiny.intermediate_size"),
    (SFT, ["model.tiny.mamba_head_dim=0"], "model.tiny.mamba_head_dim"),
    (SFT, ["model.dtype=fp8"], "model.dtype"),
    (SFT, ["model.arch=gpt2"], "model.arch"),
    (SFT, ["model.tiny.hidden_szie=64"], "model.tiny.hidden_size"),
    # --- learner
    (SFT, ["learner.lr=.nan"], "learner.lr"),
    (SFT, ["learner.lr=1e999"], "learner.lr"),
    (SFT, ["learner.lr=0"], "learner.lr"),
    (SFT, ["learner.lr=-1.0e-3"], "learner.lr"),
    (SFT, ["learner.adam_betas=[0.9, -0.1]"], "learner.adam_betas"),
    (SFT, ["learner.adam_betas=[0.9, 1.0]"], "learner.adam_betas"),
    (SFT, ["learner.adam_betas=[0.9]"], "learner.adam_betas"),
    (SFT, ["learner.weight_decay=.inf"], "learner.weight_decay"),
    (SFT, ["learner.max_grad_norm=0"], "learner.max_grad_norm"),
    (SFT, ["learner.warmup_steps=-1"], "learner.warmup_steps"),
    (SFT, ["learner.lr_schedule=exponential"], "learner.lr_schedule"),
    (SFT, ["learner.zero_stage=4"], "learner.zero_stage"),
    (SFT, ["learner.lora={r: 0}"], "learner.lora.r"),
    (SFT, ["learner.lora={r: 8, dropout: 1.5}"], "learner.lora.dropout"),
    (SFT, ["learner.gradient_accumulation_steps=1000000000"], "learner.gradient_accumulation_steps"),
    (SFT, ["lerner.lr=1.0e-3"], "learner"),
    # --- job settings, cluster, data
    (SFT, ["sft.max_steps=false"], "sft.max_steps"),
    (SFT, ["sft.eval_every_steps=0"], "sft.eval_every_steps"),
    (SFT, ["sft.max_new_tokens=5000"], "sft.max_new_tokens"),
    (SFT, ["checkpoint.every_steps=0"], "checkpoint.every_steps"),
    (SFT, ["checkpoint.keep_last=true"], "checkpoint.keep_last"),
    (SFT, ["log_every_steps=0"], "log_every_steps"),
    (SFT, ["seed=100000000000000000000000"], "seed"),
    (SFT, ["cluster.cpus_per_learner=.inf"], "cluster.cpus_per_learner"),
    (SFT, ["cluster.gpus_per_learner=-1"], "cluster.gpus_per_learner"),
    (SFT, ["data.generated.envs={math: .nan}"], "data.generated.envs.math"),
    (SFT, ["data.generated.envs={math: 0.5, code: -0.5}"], "data.generated.envs.code"),
    (SFT, ["data.eval_fraction=1.5"], "data.eval_fraction"),
    (SFT, ["data.on_bad_row=ignore"], "data.on_bad_row"),
    (SFT, ["data.path=null", "data.generated=null"], "data.path"),
    (SFT, ["data.reasoning.no_think_fraction=0.99", "data.reasoning.truncated_budget_fraction=0.1"], "data.reasoning.no_think_fraction"),
    # --- DPO and reward models
    (DPO, ["dpo.beta=.inf"], "dpo.beta"),
    (DPO, ["dpo.beta=0"], "dpo.beta"),
    (DPO, ["dpo.label_smoothing=0.5"], "dpo.label_smoothing"),
    (DPO, ["dpo.loss=kto"], "dpo.loss"),
    (DPO, ["dpo.sft_weight=.nan"], "dpo.sft_weight"),
    (DPO, ["dpo.reference=lora_disabled"], "dpo.reference"),
    (DPO, ["dpo.max_steps=1e30"], "dpo.max_steps"),
    (RM, ["rm.attributes={helpful: .nan}"], "rm.attributes.helpful"),
    (RM, ["rm.objective=pairwise"], "rm.objective"),
    (RM, ["rm.center_rewards_coefficient=-1"], "rm.center_rewards_coefficient"),
    # --- RL
    (RL, ["rollout.sampling.top_p=0"], "rollout.sampling.top_p"),
    (RL, ["rollout.sampling.temperature=-1"], "rollout.sampling.temperature"),
    (RL, ["rollout.max_model_len=100000"], "rollout.max_model_len"),
    (RL, ["rollout.sampling.max_answer_tokens=4096"], "rollout.sampling.max_answer_tokens"),
    (RL, ["rollout.gpu_memory_utilization=1.5"], "rollout.gpu_memory_utilization"),
    (RL, ["rollout.kv_cache_memory_mb=1"], "rollout.kv_cache_memory_mb"),
    (RL, ["rollout.weight_sync=broadcast", "grpo.off_policy_overlap=true"], "rollout.weight_sync"),
    (RL, ["envs.0.weight=0"], "envs.0.weight"),
    (RL, ["envs.0.weight=-1"], "envs.0.weight"),
    (RL, ["envs.0.num_train=0"], "envs.0.num_train"),
    (RL, ["envs.7.weight=0.5"], "envs"),
    (RL, ["envs=[]"], "envs"),
    (RL, ["envs=[{name: math}, {name: math}]"], "envs"),
    (RL, ["envs.0.name=no_such_env"], "envs.0"),
    (RL, ["reasoning.budgets=[0]"], "reasoning.budgets"),
    (RL, ["reasoning.no_think_fraction=0.9"], "reasoning.no_think_fraction"),
    (RL, ["grpo.prompts_per_step=3"], "grpo.prompts_per_step"),
    (RL, ["grpo.generations_per_prompt=1"], "grpo.generations_per_prompt"),
    (RL, ["grpo.prompts_per_step=1000000"], "grpo.prompts_per_step"),
    (RL, ["grpo.clip_low=1.5"], "grpo.clip_low"),
    (RL, ["grpo.tis_cap=.inf"], "grpo.tis_cap"),
    (RL, ["grpo.kl_coef=.nan"], "grpo.kl_coef"),
    (RL, ["grpo.kl_coef=0.1", "grpo.reference=lora_disabled"], "grpo.reference"),
    (RL, ["grpo.max_steps=true"], "grpo.max_steps"),
    (RL, ["learner.gradient_accumulation_steps=2"], "learner.gradient_accumulation_steps"),
    (RL, ["cluster.num_rollout_engines=1000000000000"], "cluster.num_rollout_engines"),
    # --- pipeline
    (PIPE, ["eval.budgets=[0]"], "eval.budgets"),
    (PIPE, ["eval.envs={math: -3}"], "eval.envs.math"),
    (PIPE, ["eval.max_new_tokens=0"], "eval.max_new_tokens"),
    (PIPE, ["stages.1.overrides=['init_from=${stage:nope}']"], "stages"),
    # --- files and override syntax
    ("dup-top.yaml", [], "'seed' is given twice"),
    ("list.yaml", [], "list.yaml: a recipe must be a mapping"),
    ("bad-yaml.yaml", [], "bad-yaml.yaml: not valid YAML"),
    (SFT, ["learner.lr"], "learner.lr"),
    (SFT, ["learner..lr=1"], "learner..lr"),
    (RL, [r"learner.freeze=[layers\.[03]\.mixer\.]"], "Quote items"),  # an unquoted [ inside a list item
    (SFT, ["data.generated.envs={math: 1.0"], "not a YAML list or mapping"),
]

ACCEPTED: list[tuple[str, list[str]]] = [
    (RL, ["rollout.sampling.top_k=-1"]),
    (RL, ["rollout.sampling.top_k=20"]),
    (RL, ["rollout.sampling.temperature=0"]),
    (SFT, ["model.tiny.layers_block_type=M*E-M*E-"]),
    (RL, ["envs.0.weight=0.5"]),
    (SFT, ["data.generated.envs={math: 1.0, code: 0.0}"]),
    (SFT, ["learner.lr=1e-3"]),  # YAML reads 1e-3 as a string; pydantic parses it
    (RL, [r"learner.freeze=['layers\.[03]\.mixer\.']"]),  # the quoted form of the case above
    (PIPE, []),
]


def _recipe(name: str, tmp_path: Path) -> str:
    if name in FILES:
        path = tmp_path / name
        path.write_bytes(FILES[name])
        return str(path)
    return name


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 80


@pytest.mark.parametrize(("recipe", "overrides", "named"), CASES, ids=[" ".join([c[0], *c[1]])[:80] for c in CASES])
def test_malformed_recipe_exits_2_naming_the_key(recipe: str, overrides: list[str], named: str, tmp_path: Path, capsys) -> None:
    code = main(["recipes", "show", _recipe(recipe, tmp_path), *overrides])
    err = capsys.readouterr().err
    assert code == 2, f"accepted (exit {code})"
    assert named in err, err
    assert len(err) < 2000, "the error must not dump the recipe"


def test_job_commands_stop_before_anything_starts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["sft", "--recipe", SFT, "learner.lr=.inf", f"output_dir={out}"]) == 2
    assert "learner.lr" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(("recipe", "overrides"), ACCEPTED)
def test_near_misses_still_load(recipe: str, overrides: list[str]) -> None:
    load_recipe(recipe, overrides)


def test_list_item_override_edits_the_item() -> None:
    r = load_recipe(RL, ["envs.1.weight=0.5"]).recipe
    assert [e.name for e in r.envs] == ["math", "code", "tool_use", "instruction_following"]
    assert [e.weight for e in r.envs] == [0.4, 0.5, 0.2, 0.2]


def test_cross_field_error_names_keys_and_the_override(capsys) -> None:
    assert main(["recipes", "show", RL, "grpo.prompts_per_step=3"]) == 2
    err = capsys.readouterr().err
    assert "(top level)" not in err
    assert "grpo.prompts_per_step: set by command-line override 'grpo.prompts_per_step=3'" in err
    assert "learner.micro_batch_size_per_device: set by" in err and "nano3-multienv-tiny.yaml" in err
    assert "grpo.generations_per_prompt" in err and "cluster.num_learners" in err


def test_yaml_anchors_and_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text("job: sft\nlearner: &base {lr: 1.0e-3, warmup_steps: 2}\nsft:\n  <<: {max_steps: 5}\n  max_steps: 7\n")
    r = load_recipe(str(path)).recipe
    assert (r.learner.lr, r.sft.max_steps) == (1.0e-3, 7)
