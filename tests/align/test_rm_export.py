"""`align rm` folders load with AutoModelForSequenceClassification and score as align does.

NemotronH has no sequence-classification class in transformers, so its folders ship one
(``trust_remote_code=True``); llama folders of a Bradley-Terry model load as the standard
``LlamaForSequenceClassification`` with the trained head (no newly initialised ``score``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForSequenceClassification

from align.algorithms.common import count_pairs, micro_batches
from align.cluster import LearnerGroup
from align.config.schema import ClusterConfig, LearnerConfig, ModelConfig, TokenizerConfig
from align.data import tokenize_pair
from align.learner.objectives import BradleyTerryObjective
from align.learner.reward_model import RewardModel, write_head_info
from align.init_checkpoint import prepare_initial_checkpoint
from align.models import load_tokenizer
from align.learner.reward_model import RewardModelScorer

TEXTS = [f"What is {a}+{b}? <think>{a}+{b}={a + b}</think>\\boxed{{{a + b}}}" for a in range(20) for b in range(20)]
CHATS = [
    [{"role": "user", "content": f"What is {a}+{b}?"}, {"role": "assistant", "content": f"<think>{a}+{b}={a + b + d}</think>\\boxed{{{a + b + d}}}"}]
    for a, b, d in [(1, 2, 0), (3, 4, 1), (12, 7, 0), (5, 5, 3), (9, 0, 0)]
]  # fmt: skip


@pytest.fixture(scope="module", params=["nemotron_h", "llama"])
def start(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(request.param) / "init"
    return prepare_initial_checkpoint(ModelConfig(arch=request.param), TokenizerConfig(vocab_size=300), out, texts=TEXTS)


def _save(model: RewardModel, start: Path, out: Path, names: list[str]) -> Path:
    """What the learner and the RM driver write: the model folder, the tokenizer, the head's names."""
    model.save_pretrained(out)
    load_tokenizer(start).save_pretrained(out)
    write_head_info(out, names, {n: 1.0 for n in names})
    return out


def _trl_style_scores(model: torch.nn.Module, tokenizer, chats: list) -> torch.Tensor:
    """As a TRL/OpenRLHF reward server scores: chat template -> tokens -> right-padded batch -> logits."""
    ids = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in chats]
    batch = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_multi_attribute_head_loads_with_its_trained_bias_and_names(start: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = RewardModel.from_causal_lm(start, num_labels=3).eval()
    torch.nn.init.normal_(model.score.weight, std=0.5)
    torch.nn.init.normal_(model.score.bias)  # a regression head's bias is trained: it must survive the export
    names = ["helpfulness", "correctness", "brevity"]
    folder = _save(model, start, tmp_path / "rm", names)

    hf = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert hf.config.num_labels == 3 and [hf.config.id2label[i] for i in range(3)] == names
    tok = AutoTokenizer.from_pretrained(folder)
    ids = [tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in CHATS]
    batch = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = RewardModel.from_pretrained(folder).eval()(batch["input_ids"], batch["attention_mask"])
    theirs = _trl_style_scores(hf, tok, CHATS)
    assert theirs.shape == (len(CHATS), 3)
    assert torch.allclose(theirs, ours, atol=1e-5), (theirs, ours)
    assert ours.std(0).min() > 1e-3  # the scores differ between chats: the comparison can fail


def test_trained_bradley_terry_model_scores_the_same_in_transformers(start: Path, tmp_path: Path) -> None:
    """Train a few Bradley-Terry steps on align's learner, save through it, load with transformers."""
    tok = load_tokenizer(start)
    rows = [{"prompt": c[:1], "chosen": c[1]["content"], "rejected": c[1]["content"] + " so it is"} for c in CHATS * 2]
    examples = [tokenize_pair(r, tok, 96) for r in rows]
    group = LearnerGroup(ClusterConfig(), in_process=True)
    group.setup(str(start), LearnerConfig(micro_batch_size_per_device=len(rows), lr=1e-2, lr_schedule="constant"), 5, 0, "pairwise_reward", 1)
    per_rank = micro_batches(examples, list(range(len(rows))), 1, 1, tok.pad_token_id, count_pairs)
    for _ in range(3):
        group.train_step(per_rank, BradleyTerryObjective(0.01))  # reward centering: a gradient on the bias, if it were trained
    folder = tmp_path / "rm"
    group.save_hf(str(folder), tokenizer_path=str(start))
    write_head_info(folder, ["reward"], {"reward": 1.0})

    kwargs = {} if start.parent.name.startswith("llama") else {"trust_remote_code": True}
    hf = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True, **kwargs)
    hf, info = hf[0].eval(), hf[1]
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    if kwargs:
        assert type(hf).__name__ == "AlignRewardModel"
    else:
        assert isinstance(hf, LlamaForSequenceClassification)  # the standard head, holding the trained weights
    theirs = _trl_style_scores(hf, AutoTokenizer.from_pretrained(folder), CHATS)[:, 0]
    ours = torch.tensor(RewardModelScorer(str(folder)).score(CHATS))  # align's scorer, as RL rewards use it
    assert torch.allclose(theirs, ours, atol=1e-5), (theirs, ours)
    assert ours.std() > 1e-3


def test_folder_of_the_earlier_layout_still_loads_in_align(start: Path, tmp_path: Path) -> None:
    """Before this layout, model.safetensors held the backbone alone and the head had a file of its own."""
    from safetensors.torch import save_file

    model = RewardModel.from_causal_lm(start, num_labels=2).eval()
    torch.nn.init.normal_(model.score.bias)
    model.backbone.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in model.score.state_dict(prefix="score.").items()}, str(tmp_path / "reward_head.safetensors"))
    write_head_info(tmp_path, ["a", "b"], {"a": 1.0, "b": 1.0})
    ids = torch.randint(10, 200, (2, 7))
    with torch.no_grad():
        assert torch.equal(RewardModel.from_pretrained(tmp_path).eval()(ids), model(ids))
