"""Bring your own model: reasoning tokens, template wrapping, masks without markers, <run>/init."""

import json
import os
import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.byom import REASONING_TOKENS, ChatTemplateError, check_chat, is_one_token, prepare_tokenizer
from align.config.sections import ModelConfig, TokenizerConfig
from align.data.masks import render_with_masks
from align.data.tokenize import tokenize_pair, tokenize_sft
from align.init_checkpoint import RECORD, prepare_initial_checkpoint
from align.tiny.stock import STOCK_CHATML, write_stock_checkpoint
from align.tiny.tokenizer import TEMPLATE_FILE, train_tokenizer

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>2+2=4</think>4"},
    {"role": "tool", "content": "ok"},
    {"role": "assistant", "content": "Done: 4."},
]
NO_THINK = [dict(m, content=m["content"].replace("<think>2+2=4</think>", "")) for m in CONVERSATION]
# A template that drops the system turn and ignores enable_thinking.
DEAF = "{% for m in messages %}{% if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"


@pytest.fixture(scope="module")
def stock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stock_checkpoint(tmp_path_factory.mktemp("stock") / "my-model")


@pytest.fixture
def stock(stock_dir: Path):
    return AutoTokenizer.from_pretrained(str(stock_dir))


def _prompt(tok, **kw) -> str:
    return tok.apply_chat_template(CONVERSATION[1:2], tokenize=False, add_generation_prompt=True, **kw)


def test_masks_from_rendered_prefixes_equal_the_generation_markers() -> None:
    """On the tiny template (which has markers) the prefix-diff masks are HF's, in all three modes."""
    tok = train_tokenizer(["2+2=4 Be brief. What is Done ok"] * 20, vocab_size=300)
    for kw, msgs in (({}, CONVERSATION), ({"enable_thinking": False}, NO_THINK), ({"thinking_budget": 64}, CONVERSATION)):
        ref = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kw)
        ids, mask = render_with_masks(tok, msgs, kw)
        assert ids == list(ref["input_ids"]) and mask == list(ref["assistant_masks"]) and sum(mask) > 0


def test_stock_tokenizer_gets_tokens_and_a_wrapped_template(stock) -> None:
    before = len(stock)
    assert not is_one_token(stock, "</think>") and _prompt(stock, enable_thinking=False) == _prompt(stock)
    notes = prepare_tokenizer(stock, None)
    assert len(stock) == before + len(REASONING_TOKENS) and all(is_one_token(stock, t) for t in REASONING_TOKENS)
    assert any("wrapped" in n for n in notes)
    # The wrapped ChatML renders what the tiny world's template renders, toggle and budget included.
    tiny = train_tokenizer(["hello"] * 10, vocab_size=300)
    for kw in ({}, {"enable_thinking": False}, {"enable_thinking": True, "thinking_budget": 64}):
        assert _prompt(stock, **kw) == _prompt(tiny, **kw)
        for msgs in (CONVERSATION[:3], NO_THINK[:3]):
            assert stock.apply_chat_template(msgs, tokenize=False, **kw) == tiny.apply_chat_template(msgs, tokenize=False, **kw)
    assert "/no_think" in _prompt(stock, enable_thinking=False) and _prompt(stock, enable_thinking=False).endswith("<think></think>")
    # SFT and DPO rows tokenize without {% generation %} markers; loss only on assistant content + <|im_end|>.
    ex = tokenize_sft({"messages": NO_THINK, "enable_thinking": False}, stock, 256)
    trained = stock.decode([t for t in ex["labels"] if t != -100])
    assert trained == "4<|im_end|>Done: 4.<|im_end|>"
    pair = tokenize_pair({"prompt": CONVERSATION[:2], "chosen": [{"role": "assistant", "content": "4"}],
                          "rejected": [{"role": "assistant", "content": "5"}]}, stock, 256)  # fmt: skip
    assert stock.decode([t for t in pair["rejected_labels"] if t != -100]) == "5<|im_end|>"


def test_recipe_template_replaces_the_checkpoints(stock, tmp_path: Path) -> None:
    notes = prepare_tokenizer(stock, str(TEMPLATE_FILE))
    assert notes[0] == "chat template from tokenizer.chat_template" and not any("wrapped" in n for n in notes)
    assert stock.chat_template == TEMPLATE_FILE.read_text()
    with pytest.raises(ChatTemplateError, match=r"tokenizer.chat_template: no file '.*missing.jinja'"):
        prepare_tokenizer(stock, str(tmp_path / "missing.jinja"))


def test_templates_that_cannot_carry_the_toggle_are_refused(stock, stock_dir: Path) -> None:
    no_system = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + STOCK_CHATML
    with pytest.raises(ChatTemplateError, match=r"tokenizer.chat_template: .*cannot render .* system turn \(System role not supported\).*tokenizer.chat_template=/"):
        prepare_tokenizer(stock, no_system)
    # init_from is used as it is (never wrapped): its tokens and its template are checked.
    with pytest.raises(ChatTemplateError, match="init_from: the tokenizer splits <think>, </think>"):
        check_chat(AutoTokenizer.from_pretrained(str(stock_dir)), "init_from")
    stock = AutoTokenizer.from_pretrained(str(stock_dir))
    prepare_tokenizer(stock, None)
    stock.chat_template = DEAF
    with pytest.raises(ChatTemplateError, match=r"init_from: /no_think renders the same prompt as /think.*tokenizer.chat_template=/"):
        check_chat(stock, "init_from")


def _links(folder: Path) -> dict[str, bool]:
    return {f.name: f.is_symlink() for f in folder.iterdir()}


def test_init_is_resized_recorded_rebuilt_and_linked(stock_dir: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    init = tmp_path / "run" / "init"
    out = prepare_initial_checkpoint(ModelConfig(path=str(stock_dir)), TokenizerConfig(), init, say=lines.append)
    assert len(lines) == 1 and "added 15 reasoning tokens" in lines[0] and "embeddings resized from 700 to 715 rows" in lines[0]
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.get_input_embeddings().weight.shape[0] == model.get_output_embeddings().weight.shape[0] == 715
    assert json.loads((out / RECORD).read_text())["model"]["path"] == str(stock_dir)

    # Same source: reused, nothing said. A prepared checkpoint as the source: nothing to change, every file a link.
    assert prepare_initial_checkpoint(ModelConfig(path=str(stock_dir)), TokenizerConfig(), init, say=lines.append) == out and len(lines) == 1
    prepared = tmp_path / "prepared"
    shutil.copytree(out, prepared)
    (prepared / RECORD).unlink()
    prepare_initial_checkpoint(ModelConfig(path=str(prepared)), TokenizerConfig(), init, say=lines.append)
    assert "model.path changed" in lines[1] and "nothing to change; 6 files linked" in lines[2]
    assert _links(init) == {**{f.name: True for f in prepared.iterdir()}, RECORD: False}
    assert os.path.samefile(init / "model.safetensors", prepared / "model.safetensors")

    # The source's files change (same path): rebuilt. A new template: tokenizer written, weights still linked.
    (prepared / "generation_config.json").write_text((prepared / "generation_config.json").read_text() + " ")
    prepare_initial_checkpoint(ModelConfig(path=str(prepared)), TokenizerConfig(), init, say=lines.append)
    assert "the files of model.path" in lines[3]
    prepare_initial_checkpoint(ModelConfig(path=str(prepared)), TokenizerConfig(chat_template=STOCK_CHATML), init, say=lines.append)
    assert "changed since it was built: tokenizer" in lines[5] and "wrapped" in lines[6]
    links = _links(init)
    assert links["model.safetensors"] and links["config.json"] and not links["tokenizer_config.json"] and not links["chat_template.jinja"]
    assert (prepared / "chat_template.jinja").read_text() == (out / "chat_template.jinja").read_text()  # the source is never written


def test_added_tokens_that_fit_the_embeddings_link_the_weights(stock_dir: Path, tmp_path: Path) -> None:
    """Checkpoints often pad their vocabulary: then the weights need no change."""
    padded = tmp_path / "padded"
    shutil.copytree(stock_dir, padded)
    model = AutoModelForCausalLM.from_pretrained(str(padded))
    model.resize_token_embeddings(768)
    model.save_pretrained(str(padded))
    lines: list[str] = []
    init = prepare_initial_checkpoint(ModelConfig(path=str(padded)), TokenizerConfig(), tmp_path / "init", say=lines.append)
    assert "fit the checkpoint's 768 embedding rows (weights linked)" in lines[0]
    assert _links(init)["model.safetensors"] and not _links(init)["tokenizer.json"]
    assert len(AutoTokenizer.from_pretrained(str(init))) == 715
