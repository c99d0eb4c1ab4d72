"""The tiny world's tokenizer and policy: special tokens, chat template, HF and vLLM loading."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from align.config.schema import ModelConfig, TokenizerConfig
from align.init_checkpoint import prepare_initial_checkpoint
from align.models import load_model, load_tokenizer
from align.reasoning import BUDGET_TOKENS, parse_mode
from align.tiny.tokenizer import MARKUP_TOKENS, SPECIAL_TOKENS, train_tokenizer

TEXTS = [f"What is {a} + {b}? <think>{a}+{b}={a + b}</think>\\boxed{{{a + b}}}" for a in range(40) for b in range(0, 40, 3)]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": '<think>use the tool</think><tool_call>{"name": "calculator"}</tool_call>'},
    {"role": "tool", "content": "5"},
    {"role": "assistant", "content": "<think>done</think>\\boxed{5}"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=400)


def test_special_tokens_are_single_tokens_and_round_trip(tokenizer) -> None:
    for token in SPECIAL_TOKENS + MARKUP_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, token
        assert tokenizer.decode(ids) == token
    text = "/think <|budget_256|> <think>x</think><tool_call>{}</tool_call>"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert len(BUDGET_TOKENS) == 11


def test_markup_survives_skip_special_tokens(tokenizer) -> None:
    ids = tokenizer.encode("<think>a</think>b<|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>a</think>b"


def test_digits_are_split(tokenizer) -> None:
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("1234", add_special_tokens=False)) == ["1", "2", "3", "4"]


def test_template_renders_toggle_and_budget(tokenizer) -> None:
    think = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True, thinking_budget=64)
    assert think.startswith("<|im_start|>system\n/think <|budget_64|>\nBe brief.<|im_end|>\n")
    assert think.endswith("<|im_start|>assistant\n")
    assert parse_mode(think).budget == 64 and parse_mode(think).thinking
    off = tokenizer.apply_chat_template(CONVERSATION[1:2], tokenize=False, add_generation_prompt=True, enable_thinking=False, thinking_budget=64)
    assert off == "<|im_start|>system\n/no_think<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n<think></think>"
    assert not parse_mode(off).thinking


def test_assistant_mask_covers_exactly_assistant_turns(tokenizer) -> None:
    out = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    masked = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    expected = "".join(m["content"] + "<|im_end|>" for m in CONVERSATION if m["role"] == "assistant")
    assert masked == expected
    assert "5</tool_response>" in tokenizer.decode(ids)  # the tool turn is rendered but not trained on


def test_no_think_training_turn_matches_generation_prompt(tokenizer) -> None:
    """A /no_think training sample starts its assistant turn exactly as the generation prompt does."""
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    full = tokenizer.apply_chat_template(msgs, tokenize=False, enable_thinking=False)
    prompt = tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert full.startswith(prompt) and full[len(prompt):] == "hello<|im_end|>\n"


@pytest.mark.parametrize("arch", ["nemotron_h", "llama"])
def test_factory_saves_a_model_transformers_loads(tmp_path: Path, arch: str) -> None:
    path = prepare_initial_checkpoint(ModelConfig(arch=arch), TokenizerConfig(vocab_size=400), tmp_path / "m", texts=TEXTS)
    model, tok = load_model(path), load_tokenizer(path)
    assert type(model).__name__ == {"nemotron_h": "NemotronHForCausalLM", "llama": "LlamaForCausalLM"}[arch]
    if arch == "nemotron_h":
        assert model.config.layers_block_type == ["linear_attention", "full_attention", "mlp", "linear_attention", "full_attention", "mlp"]  # M*-M*-
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 1 + 1?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5
    # The config says whether the output head is the embedding matrix, as the loaded model has it.
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    assert model.config.tie_word_embeddings is tied is (arch == "llama")
    # Idempotent: a second call reuses the folder (same weights for a resumed run).
    again = prepare_initial_checkpoint(ModelConfig(arch=arch), TokenizerConfig(vocab_size=400), tmp_path / "m", texts=["other"])
    assert torch.equal(load_model(again).lm_head.weight, model.lm_head.weight)


def test_tiny_checkpoint_is_written_in_model_dtype(tmp_path: Path) -> None:
    """``model.dtype=bfloat16`` holds for a tiny policy as for a loaded one: the same initial weights
    as float32, rounded, and NemotronH's expert-bias buffer kept float32 (transformers' rule for
    it, so a learner loading the folder in float32 or bf16 gets what it would from a real checkpoint)."""
    from safetensors.torch import load_file

    moe = {"layers_block_type": "ME*", "hidden_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1, "mamba_num_heads": 4}
    paths = {dtype: prepare_initial_checkpoint(ModelConfig(tiny=moe, dtype=dtype), TokenizerConfig(vocab_size=400), tmp_path / dtype, texts=TEXTS)
             for dtype in ("float32", "bfloat16")}  # fmt: skip
    f32, bf16 = (load_file(str(paths[d] / "model.safetensors")) for d in ("float32", "bfloat16"))
    assert json.loads((paths["bfloat16"] / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((paths["float32"] / "config.json").read_text())["dtype"] == "float32"
    assert set(bf16) == set(f32) and all(t.dtype == torch.float32 for t in f32.values())
    keep = {k for k in bf16 if k.endswith("e_score_correction_bias")}
    assert len(keep) == 1 and all(bf16[k].dtype == torch.float32 for k in keep)
    for name, t in bf16.items():
        if name not in keep:
            assert t.dtype == torch.bfloat16 and torch.equal(t, f32[name].to(torch.bfloat16)), name


VLLM_SCRIPT = """
import json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from align.models import load_model, load_tokenizer
path = sys.argv[1]
model, tok = load_model(path), load_tokenizer(path)
ids = tok.apply_chat_template([{"role": "user", "content": "What is 7 + 5?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
hf = model.generate(**ids, max_new_tokens=12, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
from vllm import LLM, SamplingParams
llm = LLM(model=path, dtype="float32", gpu_memory_utilization=0.1, enforce_eager=True, max_model_len=256)
out = llm.generate([{"prompt_token_ids": ids["input_ids"][0].tolist()}], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
print("RESULT " + json.dumps({"hf": hf, "vllm": list(out[0].outputs[0].token_ids)}))
"""


def test_tiny_nemotron_h_generates_in_vllm_like_transformers(tmp_path: Path) -> None:
    path = prepare_initial_checkpoint(ModelConfig(), TokenizerConfig(vocab_size=400), tmp_path / "m", texts=TEXTS)
    env = dict(os.environ, VLLM_LOGGING_LEVEL="ERROR")
    proc = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, str(path)], capture_output=True, text=True, timeout=300, env=env)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, proc.stderr[-3000:]
    result = json.loads(line[len("RESULT "):])
    assert len(result["vllm"]) == 12
    assert result["vllm"] == result["hf"]
