"""Reward models: the model and its folder format, the objectives and eval helpers, and the RL reward that serves it."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
import torch

from align.algorithms import rm as rm_driver
from align.algorithms.common import count_pairs, micro_batches
from align.cluster import LearnerGroup, RewardModelGroup, init_ray
from align.config.schema import ClusterConfig, LearnerConfig, LoraConfig, ModelConfig, TokenizerConfig
from align.data import pad_batch, tokenize_attributes, tokenize_pair
from align.learner import reward_model as reward_model_module
from align.learner.objectives import BradleyTerryObjective, regression_objective, reward_model_scores
from align.learner.reward_model import HEAD_JSON, RewardModel, last_token_index, write_head_info
from align.init_checkpoint import prepare_initial_checkpoint
from align.models import load_tokenizer
from align.plugins import PluginParamsError
from rewards.base import RewardFn
from rewards.registry import available_rewards, make_reward
from rewards.testing import trajectory

TEXTS = [f"What is {a}+{b}? <think>{a}+{b}={a + b}</think>\\boxed{{{a + b}}}" for a in range(20) for b in range(20)]


def test_docstring_examples() -> None:
    for module in (reward_model_module, rm_driver):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    return prepare_initial_checkpoint(ModelConfig(), TokenizerConfig(vocab_size=300), tmp_path_factory.mktemp("rm") / "init", texts=TEXTS)


def _pair_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = i % 13, (3 * i) % 11
        rows.append({
            "prompt": [{"role": "user", "content": f"What is {a}+{b}?"}],
            "chosen": f"<think>{a}+{b}={a + b}</think>\\boxed{{{a + b}}}",
            "rejected": f"<think>{a}+{b}={a + b + 2}</think>\\boxed{{{a + b + 2}}} so it is",
        })  # fmt: skip
    return rows


# ------------------------------------------------------------------ the model and its folder


def test_score_reads_the_last_real_token_whatever_the_padding(start: Path) -> None:
    model = RewardModel.from_causal_lm(start, num_labels=2).eval()
    ids = torch.randint(10, 200, (1, 9))
    with torch.no_grad():
        alone = model(ids, torch.ones_like(ids))
        padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
        mask = torch.cat([torch.ones(1, 9, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)], dim=1)
        right = model(padded, mask)
        shorter = model(ids[:, :6], torch.ones(1, 6, dtype=torch.long))
    assert alone.shape == (1, 2)
    assert torch.allclose(alone, right, atol=1e-5)
    assert not torch.allclose(alone, shorter, atol=1e-4)
    assert last_token_index(mask).tolist() == [8]


def test_backbone_is_the_causal_lms(start: Path) -> None:
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(start)
    model = RewardModel.from_causal_lm(start)
    lm_sd = lm.state_dict()
    prefix = lm.base_model_prefix + "."
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, lm_sd[prefix + name]), name


def test_folder_round_trip_and_format(start: Path, tmp_path: Path) -> None:
    model = RewardModel.from_causal_lm(start, num_labels=3).eval()
    torch.nn.init.normal_(model.score.bias)
    model.save_pretrained(tmp_path)
    write_head_info(tmp_path, ["helpfulness", "correctness", "brevity"], {"helpfulness": 1.0, "correctness": 0.5})
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_align_reward.py", HEAD_JSON} <= files
    info = json.loads((tmp_path / HEAD_JSON).read_text())
    assert info["attribute_names"] == ["helpfulness", "correctness", "brevity"]
    assert info["attribute_weights"] == {"helpfulness": 1.0, "correctness": 0.5, "brevity": 0.0}
    back = RewardModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(10, 200, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(ids), back(ids))
        r = back(ids)
        assert torch.allclose(back.combine(r), r[:, 0] + 0.5 * r[:, 1])
        assert torch.allclose(back.combine(r, {"brevity": 2.0}), 2 * r[:, 2])
    with pytest.raises(ValueError, match="unknown attributes"):
        back.combine(r, {"honesty": 1.0})
    with pytest.raises(FileNotFoundError, match="not a reward model folder"):
        RewardModel.from_pretrained(start)


def test_lora_reward_model_saves_the_trained_head(start: Path, tmp_path: Path) -> None:
    """peft keeps a frozen copy of a modules_to_save module; the saved head must be the trained one."""
    tok = load_tokenizer(start)
    examples = [tokenize_pair(r, tok, 96) for r in _pair_rows(8)]
    group = LearnerGroup(ClusterConfig(), in_process=True)
    group.setup(str(start), LearnerConfig(micro_batch_size_per_device=8, lr=1e-2, lr_schedule="constant", lora=LoraConfig(r=4)), 5, 0, "reward", 1)
    per_rank = micro_batches(examples, list(range(8)), 1, 1, tok.pad_token_id, count_pairs)
    for _ in range(3):
        group.train_step(per_rank, BradleyTerryObjective())
    group.save_hf(str(tmp_path), tokenizer_path=str(start))
    saved = RewardModel.from_pretrained(tmp_path).eval()
    plain = {"input_ids": per_rank[0][0]["chosen_input_ids"], "attention_mask": per_rank[0][0]["chosen_attention_mask"]}
    live = group.compute([[plain]], reward_model_scores)[0][0]
    with torch.no_grad():
        assert torch.allclose(saved(plain["input_ids"], plain["attention_mask"]), live, atol=1e-4)
    assert saved.score.weight.abs().sum() > 0 and not torch.equal(saved.score.weight, RewardModel.from_causal_lm(start).score.weight)


# ------------------------------------------------------------------ objectives and eval helpers


def test_bradley_terry_training_orders_the_pairs(start: Path) -> None:
    tok = load_tokenizer(start)
    examples = [tokenize_pair(r, tok, 96) for r in _pair_rows(16)]
    group = LearnerGroup(ClusterConfig(), in_process=True)
    group.setup(str(start), LearnerConfig(micro_batch_size_per_device=16, lr=3e-3, lr_schedule="constant"), 20, 0, "reward", 1)
    per_rank = micro_batches(examples, list(range(16)), 1, 1, tok.pad_token_id, count_pairs)
    first = group.train_step(per_rank, BradleyTerryObjective(center_rewards_coefficient=0.01))
    for _ in range(8):
        last = group.train_step(per_rank, BradleyTerryObjective(center_rewards_coefficient=0.01))
    assert first["pairs"] == 16 and last["loss"] < first["loss"]
    assert last["accuracy"] / last["pairs"] >= 0.9


def test_regression_objective_sums_per_attribute_errors(start: Path) -> None:
    tok = load_tokenizer(start)
    rows = [{"prompt": "What is 2+2?", "response": f"It is {i}", "attributes": {"correctness": float(i == 4), "brevity": i / 4}} for i in range(4)]
    mb = pad_batch([tokenize_attributes(r, tok, 64, ["correctness", "brevity"]) for r in rows], tok.pad_token_id)
    model = RewardModel.from_causal_lm(start, num_labels=2).eval()
    with torch.no_grad():
        loss, metrics = regression_objective(model, mb)
        pred = model(mb["input_ids"], mb["attention_mask"])
    target = mb["attributes"]
    assert loss.item() == pytest.approx(((pred - target) ** 2).sum().item(), rel=1e-5)
    assert metrics["rows"] == 4
    assert metrics["sq_err_1"] == pytest.approx(((pred[:, 1] - target[:, 1]) ** 2).sum().item(), rel=1e-5)
    summary = rm_driver.attribute_means(["correctness", "brevity"])(dict(metrics, loss=1.0))
    assert set(summary) == {"loss", "mse_correctness", "mse_brevity"}
    assert summary["mse_brevity"] == pytest.approx(metrics["sq_err_1"] / 4)


def test_pairwise_order_accuracy_skips_ties_and_other_prompts() -> None:
    rows = [{"prompt": "a"}, {"prompt": "a"}, {"prompt": "a"}, {"prompt": "b"}]
    scores = torch.tensor([3.0, 2.0, 1.0, 5.0])
    targets = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert rm_driver.pairwise_order_accuracy(rows, scores, targets) == (1.0, 2)
    assert rm_driver.pairwise_order_accuracy(rows, -scores, targets) == (0.0, 2)


# ------------------------------------------------------------------ the RL reward


@pytest.fixture(scope="module")
def trained_folder(start: Path, tmp_path_factory) -> Path:
    """A two-attribute reward model folder whose outputs differ between answers."""
    out = tmp_path_factory.mktemp("rm_folder")
    model = RewardModel.from_causal_lm(start, num_labels=2)
    torch.nn.init.normal_(model.score.weight, std=1.0)
    model.save_pretrained(out)
    write_head_info(out, ["correctness", "brevity"], {"correctness": 1.0, "brevity": 0.25})
    load_tokenizer(start).save_pretrained(out)
    return out


BATCH = [
    trajectory("<think>2+2=4</think>\\boxed{4}"),
    trajectory("<think>2+2=5</think>\\boxed{5}"),
    trajectory("\\boxed{4}", thinking=False),
    trajectory("<think>2+2=4, and some more words to be longer</think>\\boxed{4}", budget=64),
    trajectory("4"),
]


def test_reward_model_reward_in_process_scores_each_conversation(trained_folder: Path) -> None:
    info = available_rewards()["reward_model"]
    assert info.ok and info.source == "built-in", info
    fn = make_reward("reward_model", {"path": str(trained_folder), "num_actors": 0, "batch_size_per_actor": 2})
    assert isinstance(fn, RewardFn)
    scores = fn.score(BATCH)
    assert len(scores) == len(BATCH) and len(set(scores)) == len(BATCH)
    # Batching and order do not change a score: each alone gives the same value.
    one = [fn.score([x])[0] for x in BATCH]
    assert scores == pytest.approx(one, abs=1e-5)
    # Weights: the saved ones by default, the recipe's when given.
    scorer = reward_model_module.RewardModelScorer(str(trained_folder))
    assert scorer.attributes() == {"correctness": 1.0, "brevity": 0.25}
    only = make_reward("reward_model", {"path": str(trained_folder), "num_actors": 0, "attribute_weights": {"correctness": 1.0}})
    assert only.score(BATCH) != pytest.approx(scores)
    assert fn.score([]) == []


def test_reward_model_renders_the_trajectory_mode(trained_folder: Path) -> None:
    scorer = reward_model_module.RewardModelScorer(str(trained_folder))
    think, no_think = trajectory("\\boxed{4}"), trajectory("\\boxed{4}", thinking=False)
    from rollout.chat import chat_template_kwargs

    assert chat_template_kwargs(no_think.mode) == {"enable_thinking": False}
    assert chat_template_kwargs(trajectory("x", budget=50).mode) == {"enable_thinking": True, "thinking_budget": 64}
    text = scorer.tokenizer.decode(scorer._render(no_think.messages, chat_template_kwargs(no_think.mode)))
    assert "/no_think" in text and "<think></think>\\boxed{4}" in text
    assert scorer.score([think.messages], [chat_template_kwargs(think.mode)]) != scorer.score([no_think.messages], [chat_template_kwargs(no_think.mode)])


def test_reward_model_reward_errors_speak_to_the_user(trained_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(PluginParamsError, match="no reward model at"):
        make_reward("reward_model", {"path": str(tmp_path)})
    with pytest.raises(PluginParamsError, match="honesty"):
        make_reward("reward_model", {"path": str(trained_folder), "attribute_weights": {"honesty": 1.0}})
    with pytest.raises(PluginParamsError, match="num_actor"):
        make_reward("reward_model", {"path": str(trained_folder), "num_actor": 2})


def test_reward_model_group_actors_match_in_process(trained_folder: Path) -> None:
    from rollout.chat import chat_template_kwargs

    init_ray()
    conversations, kwargs = [x.messages for x in BATCH], [chat_template_kwargs(x.mode) for x in BATCH]
    local = RewardModelGroup(str(trained_folder), in_process=True).score(conversations, kwargs)
    group = RewardModelGroup(str(trained_folder), num_actors=2, cpus_per_actor=1)
    try:
        assert group.size == 2
        assert group.score(conversations, kwargs) == pytest.approx(local, abs=1e-5)
        assert group.score(conversations[:1], kwargs[:1]) == pytest.approx(local[:1], abs=1e-5)  # fewer items than actors
        assert group.attributes() == {"correctness": 1.0, "brevity": 0.25}
    finally:
        group.shutdown()
    fn = make_reward("reward_model", {"path": str(trained_folder), "num_actors": 1})
    try:
        assert fn.score(BATCH) == pytest.approx(local, abs=1e-5)
    finally:
        fn.close()


def test_an_rl_recipe_names_the_reward_model_like_any_reward(trained_folder: Path) -> None:
    from align.config import load_recipe
    from align.config import RecipeError

    spec = f"rewards=[{{name: reward_model, weight: 0.5, params: {{path: {trained_folder}, num_actors: 0}}}}]"
    loaded = load_recipe("nano3-multienv-tiny", [spec])
    assert loaded.recipe.rewards[0].name == "reward_model" and loaded.recipe.rewards[0].params["num_actors"] == 0
    with pytest.raises(RecipeError, match="batch_size"):
        load_recipe("nano3-multienv-tiny", [spec.replace("num_actors: 0", "batch_size: 8")])


def test_bradley_terry_on_a_file_too_small_for_one_batch_exits_2(tmp_path: Path) -> None:
    """The check every supervised job shares (``prepare_job``): named file, its rows, and the key to lower; no traceback."""
    import subprocess
    import sys

    example = Path(__file__).resolve().parents[2] / "examples" / "data" / "preferences.jsonl"
    n = sum(1 for line in example.read_text().splitlines() if line.strip())
    cmd = [sys.executable, "-m", "align.cli", "rm", "--recipe", "tiny-rm", f"data.path={example}", "data.eval_fraction=0.0",
           "learner.micro_batch_size_per_device=64", f"output_dir={tmp_path / 'run'}", f"init_from={tmp_path / 'none'}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=example.parents[2])
    out = " ".join((proc.stderr + proc.stdout).split())
    assert proc.returncode == 2 and "Traceback" not in out, out[-2000:]
    assert f"{example}: {n} rows gave {n} training examples, fewer than one global batch of 64" in out
    assert f"set learner.micro_batch_size_per_device={n} (or lower)" in out
