"""Bring your own model as a user does it: a Llama checkpoint with its own BPE tokenizer and a stock
ChatML template (no {% generation %} markers, no think tokens, no toggle), built locally
(align/tiny/stock.py), through `align sft`, `align dpo` and `align rl`."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from align.tiny.stock import write_stock_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ALIGN = [sys.executable, "-m", "align.cli"]
ONE = ["cluster.num_learners=1", "learner.warmup_steps=2", "learner.micro_batch_size_per_device=8"]
DATA = ["data.generated.envs={math: 1.0}", "data.generated.num_train=256", "data.generated.num_eval=32"]
# The README's command, one step: all four environments at the recipe's sizes. (With 4 math prompts
# of 24 tokens, a fresh policy's groups are all equal and the step has no gradient.)
RL = ["init_from=null", "grpo.max_steps=1", "grpo.eval_every_steps=1"]


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stock_checkpoint(tmp_path_factory.mktemp("byom") / "my-model")


def _run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(ALIGN + args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _records(run_dir: Path, split: str) -> dict[int, dict]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l]
    return {r["step"]: r for r in rows if r["split"] == split}


def test_bad_template_or_tokenizer_exits_2_before_any_actor(stock: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    missing = _run(["sft", "--recipe", "tiny-sft", f"model.path={stock}", f"tokenizer.chat_template={tmp_path / 'chatml.jinja'}",
                    f"output_dir={tmp_path / 'a'}"], timeout=120)  # fmt: skip
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert "tokenizer.chat_template: no file" in missing.stderr and "Traceback" not in missing.stderr
    # init_from is used as it is: a checkpoint whose tokenizer splits </think> is refused with what to do.
    raw = _run(["rl", "--recipe", "nano3-multienv-tiny", f"init_from={stock}", f"output_dir={tmp_path / 'b'}"], timeout=120)
    assert raw.returncode == 2, raw.stderr[-2000:]
    assert "init_from: the tokenizer splits <think>, </think>" in raw.stderr and "model.path" in raw.stderr
    assert time.perf_counter() - t0 < 60 and "Ray" not in raw.stdout + raw.stderr


@pytest.mark.slow
def test_sft_dpo_rl_on_a_stock_checkpoint(stock: Path, tmp_path: Path) -> None:
    sft_dir = tmp_path / "sft"
    sft = _run(["sft", "--recipe", "tiny-sft", f"model.path={stock}", *ONE, *DATA, "sft.max_steps=40", "sft.eval_every_steps=40",
                "sft.num_eval_samples_to_generate=0", "learner.lr=3e-3", f"output_dir={sft_dir}"])  # fmt: skip
    assert sft.returncode == 0, sft.stderr[-3000:]
    assert "added 15 reasoning tokens" in sft.stdout and "embeddings resized from 700 to 715 rows" in sft.stdout
    evals = _records(sft_dir, "eval")
    assert evals[40]["loss"] < 0.7 * evals[0]["loss"], evals  # it learned, through masks computed without markers
    assert json.loads((sft_dir / "init" / "align_init.json").read_text())["model"]["path"] == str(stock)

    dpo_dir = tmp_path / "dpo"
    dpo = _run(["dpo", "--recipe", "tiny-dpo", f"init_from={sft_dir / 'final'}", *ONE, *DATA, "dpo.max_steps=3",
                "dpo.eval_every_steps=3", "dpo.num_eval_samples_to_generate=0", f"output_dir={dpo_dir}"])  # fmt: skip
    assert dpo.returncode == 0, dpo.stderr[-3000:]
    assert sorted(_records(dpo_dir, "train")) == [1, 2, 3] and (dpo_dir / "final" / "config.json").is_file()

    # RL straight from the stock checkpoint (the path that failed after 86 s on '</think>').
    rl_dir = tmp_path / "rl"
    rl = _run(["rl", "--recipe", "nano3-multienv-tiny", f"model.path={stock}", *RL, f"output_dir={rl_dir}"])
    assert rl.returncode == 0, rl.stderr[-3000:]
    step = _records(rl_dir, "train")[1]
    assert step["grad_norm"] > 0
    assert "math/no_think/toggle_compliance" in _records(rl_dir, "eval")[1]
    # The published policy carries the tokens and the wrapped template: /no_think changes its prompt.
    tok = AutoTokenizer.from_pretrained(str(rl_dir / "final"))
    assert len(tok.encode("</think>", add_special_tokens=False)) == 1
    off = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert "/no_think" in off and off.endswith("<think></think>")
