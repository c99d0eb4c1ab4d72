"""Every kept checkpoint carries a Hugging Face folder: a mid-run checkpoint loads with transformers
and gives the learners' logits at that step; ``align export`` copies it out."""

import json
from pathlib import Path

import pytest
import torch

from align import cli
from align.cluster import LearnerGroup, init_ray
from align.config.schema import ClusterConfig, LearnerConfig, ModelConfig, TokenizerConfig
from align.export import ExportError, export, write_checkpoint
from align.learner.objectives import sft_objective
from align.init_checkpoint import prepare_initial_checkpoint
from align.quiet import QUIET_ENV, VERBOSE_ENV
from align.runlog import Checkpoints

TEXTS = [f"What is {a} + {b}? <think>{a}+{b}={a + b}</think>\\boxed{{{a + b}}}" for a in range(30) for b in range(0, 30, 3)]


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(4, vocab, (2, 20), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :5] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "loss_denominator": torch.tensor(float((labels[:, 1:] != -100).sum()))}  # fmt: skip


def test_a_mid_run_checkpoint_exports_an_hf_folder_with_the_learners_logits(tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = prepare_initial_checkpoint(ModelConfig(), TokenizerConfig(vocab_size=300), tmp_path / "init", texts=TEXTS)
    vocab = json.loads((start / "config.json").read_text())["vocab_size"]
    mb = _batch(vocab)

    def logits(model, mb):  # nested: Ray ships it by value (the learners cannot import a test module)
        return model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits

    init_ray()
    group = LearnerGroup(ClusterConfig(num_learners=2, cpus_per_learner=1))
    try:
        # ZeRO-3: the HF folder needs the gathered weights, not rank 0's shard.
        group.setup(str(start), LearnerConfig(zero_stage=3, micro_batch_size_per_device=1, lr=1e-2, lr_schedule="constant"), 4, seed=0)
        halves = [[{k: v[i : i + 1] if v.dim() else v for k, v in mb.items()}] for i in range(2)]
        for _ in range(2):
            group.train_step(halves, sft_objective)
        run = tmp_path / "run"
        Checkpoints(run, keep_last=2).save(2, lambda tmp: write_checkpoint(group, tmp, start, save_hf=True), {})
        at_step_2 = group.compute(halves, logits)
        group.train_step(halves, sft_objective)  # the learners move on; the checkpoint must not
    finally:
        group.shutdown()

    out = export(run, tmp_path / "exported")  # a run folder: its latest checkpoint
    assert (run / "checkpoints" / "step_000002" / "hf" / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    AutoTokenizer.from_pretrained(str(out))  # the tokenizer travels with it
    with torch.no_grad():
        got = [model(input_ids=h[0]["input_ids"], attention_mask=h[0]["attention_mask"]).logits for h in halves]
    start_model = AutoModelForCausalLM.from_pretrained(str(start)).eval()
    with torch.no_grad():
        before = start_model(input_ids=halves[0][0]["input_ids"]).logits
    assert (got[0] - before).abs().max() > 1e-2  # two steps at lr 1e-2 moved the weights
    for g, want in zip(got, at_step_2, strict=True):
        assert torch.allclose(g, want[0], atol=1e-5), (g - want[0]).abs().max()


def test_export_names_what_is_missing(tmp_path, monkeypatch, capsys) -> None:
    for key in (*QUIET_ENV, VERBOSE_ENV):  # cli.main sets the quiet-log switches: restore them after
        monkeypatch.delenv(key, raising=False)
    ckpt = tmp_path / "run" / "checkpoints" / "step_000004"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text('{"step": 4}')
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_000004")
    with pytest.raises(ExportError, match=r"step_000004 has no hf/ folder: it was written with checkpoint.save_hf=false"):
        export(tmp_path / "run", tmp_path / "out")
    with pytest.raises(ExportError, match=r"not a checkpoint"):
        export(tmp_path / "nothing", tmp_path / "out")
    assert cli.main(["export", str(ckpt), str(tmp_path / "out")]) == 2
    assert "has no hf/ folder" in capsys.readouterr().err
