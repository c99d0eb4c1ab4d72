"""align.data: loss masks, reasoning transforms, bad rows, pairs, batch plan and sharding."""

import json
import random
import re
import sys
import types

import pytest
import torch

from align.config.schema import DataConfig, GeneratedData, ReasoningDataConfig
from align.data import (
    EVAL_SPLITS,
    IGNORE_INDEX,
    BatchPlan,
    DataError,
    apply_reasoning_mix,
    example_lengths,
    generated_rows,
    load_checked_rows,
    load_rows,
    load_splits,
    pad_batch,
    prepare_data,
    shard_batch,
    strip_thinking,
    tokenize_attributes,
    tokenize_pair,
    tokenize_rows,
    tokenize_sft,
    train_eval_split,
    truncate_thinking,
    validate_preference_row,
    validate_sft_row,
)
from align.data.reasoning_mix import fit_budget
from align.reasoning import BUDGET_LADDER, THINK_CLOSE, THINK_OPEN, budget_token

LONG_TRACE = " ".join(f"step {i}: add {i} and {i + 1} to get {2 * i + 1}." for i in range(12))

SINGLE = [
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "<think>2 plus 3 is 5</think>The answer is 5."},
]
MULTI_TOOL = [
    {"role": "system", "content": "You can call a calculator."},
    {"role": "user", "content": "What is 12 * 7?"},
    {"role": "assistant", "content": '<think>use the tool</think><tool_call>{"name": "calc", "arguments": {"expr": "12*7"}}</tool_call>'},
    {"role": "tool", "content": "84"},
    {"role": "assistant", "content": "<think>the tool said 84</think>The answer is 84."},
    {"role": "user", "content": "And plus 1?"},
    {"role": "assistant", "content": "85"},
]


def _decode_labeled(tok, example) -> str:
    return tok.decode([t for t, lab in zip(example["input_ids"], example["labels"]) if lab != IGNORE_INDEX], skip_special_tokens=False)


def _expected_labeled(messages) -> str:
    return "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")


def _row(messages, **extra):
    return {"messages": messages, **extra}


def _long_row(answer: str = "The answer is 42.") -> dict:
    return _row([{"role": "user", "content": "Add them all."}, {"role": "assistant", "content": f"{THINK_OPEN}{LONG_TRACE}{THINK_CLOSE}{answer}"}])


# ---------------------------------------------------------------- loss masking


@pytest.mark.parametrize("messages", [SINGLE, MULTI_TOOL], ids=["single", "multi_tool"])
@pytest.mark.parametrize("thinking", [True, False], ids=["think", "no_think"])
def test_labels_cover_exactly_the_assistant_turns(tiny_tokenizer, messages, thinking):
    if not thinking:  # /no_think rows carry no traces; the template adds the empty block itself
        messages = strip_thinking(_row(messages))["messages"]
    row = _row(messages, enable_thinking=thinking, thinking_budget=64 if thinking else None)
    ex = tokenize_sft(row, tiny_tokenizer, max_seq_len=512)
    assert len(ex["input_ids"]) == len(ex["labels"])
    assert _decode_labeled(tiny_tokenizer, ex) == _expected_labeled(messages)
    full = tiny_tokenizer.decode(ex["input_ids"], skip_special_tokens=False)
    if thinking:
        assert f"/think {budget_token(64)}" in full
    else:
        assert "/no_think" in full
        n_turns = sum(m["role"] == "assistant" for m in messages)
        assert full.count("<|im_start|>assistant\n<think></think>") == n_turns  # present, but carries no loss
    # labels equal the ids wherever they are set
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ex["input_ids"], ex["labels"]))


def test_long_rows_are_truncated_and_counted(tiny_tokenizer):
    rows = [_row(SINGLE), _long_row()]
    n_single = len(tokenize_sft(rows[0], tiny_tokenizer, 1024)["input_ids"])
    out = tokenize_rows(rows, "sft", tiny_tokenizer, max_seq_len=n_single)
    assert [len(e["input_ids"]) for e in out.examples] == [n_single, n_single]
    assert out.num_truncated == 1
    with pytest.raises(DataError, match=r"2 bad rows in rows:\n  row 0: no assistant token falls within max_seq_len=8\n  row 1: "):
        tokenize_rows(rows, "sft", tiny_tokenizer, max_seq_len=8)


# ---------------------------------------------------------------- reasoning transforms


def test_no_think_transform_strips_thinking_and_sets_the_flag(tiny_tokenizer):
    row = _row(MULTI_TOOL, thinking_budget=128)
    out = strip_thinking(row)
    assert out["enable_thinking"] is False and out["thinking_budget"] is None
    assistant = [m["content"] for m in out["messages"] if m["role"] == "assistant"]
    assert assistant == ['<tool_call>{"name": "calc", "arguments": {"expr": "12*7"}}</tool_call>', "The answer is 84.", "85"]
    assert row["messages"] == MULTI_TOOL and "enable_thinking" not in row  # input untouched
    labeled = _decode_labeled(tiny_tokenizer, tokenize_sft(out, tiny_tokenizer, 512))
    assert THINK_OPEN not in labeled and "use the tool" not in labeled
    assert strip_thinking(_row([{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>only</think>"}])) is None


@pytest.mark.parametrize("budget", [16, 32])
def test_truncation_keeps_the_answer_and_cuts_the_trace_to_the_budget(tiny_tokenizer, budget):
    row = _long_row()
    out = truncate_thinking(row, tiny_tokenizer, random.Random(0), budget=budget)
    content = out["messages"][1]["content"]
    assert content.startswith(THINK_OPEN) and content.endswith(f"{THINK_CLOSE}The answer is 42.")
    trace = content[len(THINK_OPEN) : content.index(THINK_CLOSE)]
    assert LONG_TRACE.startswith(trace)
    kept = len(tiny_tokenizer.encode(trace, add_special_tokens=False))
    assert budget - budget // 4 <= kept <= budget
    assert out["enable_thinking"] is True and out["thinking_budget"] == budget
    # in the rendered sequence: the budget token in the system turn, and at most `budget` tokens
    # between the tags (what a rollout lets the policy think before it forces a close)
    ids = tokenize_sft(out, tiny_tokenizer, 1024)["input_ids"]
    open_id, close_id = tiny_tokenizer.convert_tokens_to_ids([THINK_OPEN, THINK_CLOSE])
    assert ids.index(close_id) - ids.index(open_id) - 1 == kept <= budget
    cuts = {len(truncate_thinking(row, tiny_tokenizer, random.Random(s), budget=budget)["messages"][1]["content"]) for s in range(20)}
    assert len(cuts) > 1  # the margin is drawn per row: the policy learns to close early, not at one count
    assert tiny_tokenizer.convert_tokens_to_ids(budget_token(budget)) in ids


def test_truncation_draws_a_ladder_step_below_the_trace_and_skips_short_traces(tiny_tokenizer):
    n_trace = len(tiny_tokenizer.encode(LONG_TRACE, add_special_tokens=False))
    budgets = {truncate_thinking(_long_row(), tiny_tokenizer, random.Random(s))["thinking_budget"] for s in range(30)}
    assert budgets == {b for b in BUDGET_LADDER if b < n_trace}
    assert truncate_thinking(_row(SINGLE), tiny_tokenizer, random.Random(0)) is None  # trace shorter than 16 tokens


def test_fitted_budget_tags_a_step_the_trace_fits_and_cuts_nothing(tiny_tokenizer):
    row = _row(SINGLE)
    need = len(tiny_tokenizer.encode("2 plus 3 is 5", add_special_tokens=False))
    smallest = min(b for b in BUDGET_LADDER if b >= need)
    steps = {fit_budget(row, tiny_tokenizer, random.Random(s))["thinking_budget"] for s in range(30)}
    assert steps == {smallest, BUDGET_LADDER[BUDGET_LADDER.index(smallest) + 1]}
    out = fit_budget(row, tiny_tokenizer, random.Random(0))
    assert out["messages"] == row["messages"] and out["enable_thinking"] is True
    assert tiny_tokenizer.convert_tokens_to_ids(budget_token(out["thinking_budget"])) in tokenize_sft(out, tiny_tokenizer, 512)["input_ids"]
    assert fit_budget(strip_thinking(row), tiny_tokenizer, random.Random(0)) is None


def test_reasoning_mix_assigns_the_configured_shares_deterministically(tiny_tokenizer):
    rows = [_long_row(f"The answer is {i}.") for i in range(100)]
    cfg = ReasoningDataConfig(no_think_fraction=0.1, truncated_budget_fraction=0.03)
    out, counts = apply_reasoning_mix(rows, cfg, tiny_tokenizer, seed=7)
    assert counts["no_think"] == 10 and counts["truncated_budget"] == 3 and counts["unchanged"] == 87
    assert sum(r.get("enable_thinking") is False for r in out) == 10
    assert sum(r.get("thinking_budget") is not None for r in out) == 3
    assert [r["messages"][1]["content"].endswith(f"The answer is {i}.") for i, r in enumerate(out)] == [True] * 100
    again, _ = apply_reasoning_mix(rows, cfg, tiny_tokenizer, seed=7)
    assert again == out
    other, _ = apply_reasoning_mix(rows, cfg, tiny_tokenizer, seed=8)
    assert other != out
    fitted_cfg = ReasoningDataConfig(no_think_fraction=0.1, truncated_budget_fraction=0.03, fitted_budget_fraction=0.2)
    mixed, counts = apply_reasoning_mix(rows, fitted_cfg, tiny_tokenizer, seed=7)
    assert (counts["no_think"], counts["truncated_budget"], counts["fitted_budget"], counts["unchanged"]) == (10, 3, 20, 67)
    fitted = [r for r in mixed if r.get("thinking_budget") is not None and r["messages"] == _long_row(r["messages"][1]["content"].split("</think>")[1])["messages"]]
    assert len(fitted) == 20


# ---------------------------------------------------------------- bad rows

GOOD = {"messages": SINGLE}
BAD_ROWS = [
    ({"text": "hi"}, "missing 'messages'"),
    ({"messages": "hello"}, "messages is a str, expected a list"),
    ({"messages": [{"role": "bot", "content": "x"}, SINGLE[1]]}, "messages\\[0\\] has unknown role 'bot'"),
    ({"messages": [SINGLE[0], {"role": "assistant", "content": 5}]}, "messages\\[1\\] \\(assistant\\) has content of type int"),
    ({"messages": [SINGLE[0]]}, "messages has no assistant turn"),
    ({"messages": [SINGLE[0], {"role": "assistant", "content": "  "}]}, "messages\\[1\\] is an empty assistant turn"),
    ({"messages": SINGLE, "enable_thinking": False}, "enable_thinking is false but messages\\[1\\] holds a <think> trace"),
    ({"messages": SINGLE, "thinking_budget": "lots"}, "thinking_budget is 'lots'"),
]


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("bad, reason", BAD_ROWS, ids=[r for _, r in BAD_ROWS])
def test_a_malformed_row_fails_with_its_index_file_and_reason(tmp_path, bad, reason):
    path = _write_jsonl(tmp_path / "train.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError, match=rf"row 2 of {re.escape(path)} \(line 3\): {reason}"):
        load_checked_rows(path, validate_sft_row)


def test_invalid_json_line_is_a_bad_row_too(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", [GOOD, "{not json", GOOD])
    with pytest.raises(DataError, match=r"row 1 of .*train.jsonl \(line 2\): invalid JSON"):
        load_checked_rows(path, validate_sft_row)
    with pytest.raises(DataError, match="invalid JSON"):
        load_rows(path)


def test_skip_mode_skips_and_counts_bad_rows(tmp_path):
    rows = [GOOD] + [bad for bad, _ in BAD_ROWS] + ["[oops", GOOD]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    good, skipped = load_checked_rows(path, validate_sft_row, on_bad_row="skip")
    assert len(good) == 2 and skipped == len(BAD_ROWS) + 1


PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]
PAIR = {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "5"}], "rejected": [{"role": "assistant", "content": "6"}]}
BAD_PAIRS = [
    ({"prompt": PROMPT, "chosen": PAIR["chosen"]}, "missing 'rejected'"),
    ({**PAIR, "chosen": " "}, "chosen is an empty response"),
    ({**PAIR, "chosen": [{"role": "assistant", "content": ""}]}, "chosen\\[0\\] is an empty assistant turn"),
    ({**PAIR, "rejected": "5"}, "chosen and rejected are identical"),
    ({"prompt": "2+3?", "chosen": PAIR["chosen"], "rejected": "6"}, "prompt is plain text but chosen/rejected are not"),
]


@pytest.mark.parametrize("bad, reason", BAD_PAIRS, ids=[r for _, r in BAD_PAIRS])
def test_bad_preference_rows_fail_with_their_index_or_are_skipped(tiny_tokenizer, bad, reason):
    rows = [PAIR, bad, PAIR]
    with pytest.raises(DataError, match=rf"row 1 of prefs.jsonl: {reason}"):
        tokenize_rows(rows, "preference", tiny_tokenizer, 256, source="prefs.jsonl")
    out = tokenize_rows(rows, "preference", tiny_tokenizer, 256, on_bad_row="skip")
    assert len(out.examples) == 2 and out.num_skipped == 1


# ---------------------------------------------------------------- preference and attribute rows


def test_pair_shares_the_prompt_and_labels_only_the_response(tiny_tokenizer):
    chosen = [
        {"role": "assistant", "content": "<tool_call>calc</tool_call>"},
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "The answer is 5."},
    ]
    context = [*PROMPT, {"role": "assistant", "content": "Earlier reply."}, {"role": "user", "content": "Again?"}]
    ex = tokenize_pair({"prompt": context, "chosen": chosen, "rejected": "The answer is 6."}, tiny_tokenizer, 256)
    c_ids, r_ids = ex["chosen_input_ids"], ex["rejected_input_ids"]
    n = next(i for i, (a, b) in enumerate(zip(c_ids, r_ids)) if a != b)
    prompt_ids = tiny_tokenizer.apply_chat_template(context, tokenize=True, return_dict=True)["input_ids"]
    assert n >= len(prompt_ids) and c_ids[: len(prompt_ids)] == prompt_ids
    # the earlier assistant turn in the prompt carries no loss
    assert _decode_labeled(tiny_tokenizer, {"input_ids": c_ids, "labels": ex["chosen_labels"]}) == _expected_labeled(chosen)
    assert _decode_labeled(tiny_tokenizer, {"input_ids": r_ids, "labels": ex["rejected_labels"]}) == "The answer is 6.<|im_end|>"


def test_implicit_prompt_and_plain_text_pairs(tiny_tokenizer):
    implicit = {"chosen": [*PROMPT, *PAIR["chosen"]], "rejected": [*PROMPT, *PAIR["rejected"]]}
    assert tokenize_pair(implicit, tiny_tokenizer, 256) == tokenize_pair(PAIR, tiny_tokenizer, 256)
    ex = tokenize_pair({"prompt": "2 + 3 =", "chosen": " 5", "rejected": " 6"}, tiny_tokenizer, 256)
    eos = tiny_tokenizer.eos_token_id
    prompt_ids = tiny_tokenizer("2 + 3 =")["input_ids"]
    assert ex["chosen_input_ids"][: len(prompt_ids)] == prompt_ids and ex["chosen_input_ids"][-1] == eos
    assert ex["chosen_labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert ex["chosen_labels"][len(prompt_ids) :] == ex["chosen_input_ids"][len(prompt_ids) :]


def test_attribute_rows_give_ids_and_ratings_in_the_given_order(tiny_tokenizer):
    row = {"prompt": "Say hi.", "response": "Hi!", "attributes": {"helpfulness": 3.0, "verbosity": 1}}
    ex = tokenize_attributes(row, tiny_tokenizer, 256, ["verbosity", "helpfulness"])
    assert ex["attributes"] == [1.0, 3.0]
    assert tiny_tokenizer.decode(ex["input_ids"], skip_special_tokens=False).endswith("<|im_start|>assistant\nHi!<|im_end|>\n")
    with pytest.raises(DataError, match="attribute 'coherence' is missing"):
        tokenize_attributes(row, tiny_tokenizer, 256, ["coherence"])
    batch = pad_batch([ex, tokenize_attributes({**row, "response": "Hello there!"}, tiny_tokenizer, 256, ["verbosity", "helpfulness"])], 0)
    assert batch["attributes"].shape == (2, 2) and batch["attributes"].dtype == torch.float32


# ---------------------------------------------------------------- batching


def test_pad_batch_pads_right_with_masks_and_ignored_labels():
    batch = pad_batch([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    pair = pad_batch([{"chosen_input_ids": [1, 2], "chosen_labels": [1, 2], "rejected_input_ids": [1, 2, 3, 4], "rejected_labels": [1, 2, 3, 4]}], 0)
    assert pair["chosen_input_ids"].shape == pair["rejected_input_ids"].shape == (1, 4)
    assert pair["chosen_attention_mask"].tolist() == [[1, 1, 0, 0]]
    with pytest.raises(ValueError, match="does not know how to batch key 'truncated'"):
        pad_batch([{"input_ids": [1], "truncated": True}], 0)


@pytest.mark.parametrize("lengths", [None, "random"])
def test_batch_plan_resumes_exactly_across_epochs(lengths):
    n, gbs = 37, 8  # 4 steps per epoch, a different 5 examples wait each epoch
    lens = [random.Random(i).randint(1, 100) for i in range(n)] if lengths else None
    plan = BatchPlan(n, gbs, seed=3, lengths=lens, megabatch_size=2)
    uninterrupted = [plan.batch(k) for k in range(14)]
    for epoch in (uninterrupted[0:4], uninterrupted[4:8], uninterrupted[8:12]):  # distinct examples per epoch
        flat = [i for b in epoch for i in b]
        assert len(set(flat)) == len(flat) == 32
    assert uninterrupted[:4] != uninterrupted[4:8]
    for resume_at in (0, 3, 4, 9):
        fresh = BatchPlan(n, gbs, seed=3, lengths=lens, megabatch_size=2)
        fresh.check_state(plan.state_dict())
        resumed = [b for _, (_, b) in zip(range(14 - resume_at), fresh.batches(resume_at))]
        assert resumed == uninterrupted[resume_at:]
    if lens:
        assert all(lens[b[i]] >= lens[b[i + 1]] for b in uninterrupted for i in range(gbs - 1))
    with pytest.raises(ValueError, match="batch plan differs"):
        BatchPlan(n + 1, gbs, seed=3, lengths=(lens + [5]) if lens else None, megabatch_size=2).check_state(plan.state_dict())


def test_two_ranks_by_one_step_see_the_samples_of_one_rank_by_two_steps():
    examples = [{"input_ids": list(range(1, 2 + i % 5)), "labels": list(range(1, 2 + i % 5))} for i in range(24)]
    plan = BatchPlan(len(examples), 8, seed=0, lengths=example_lengths(examples))
    for step in range(5):
        batch = plan.batch(step)
        two_ranks = [mb for rank in range(2) for mb in shard_batch(batch, world_size=2, rank=rank, gradient_accumulation_steps=1)]
        one_rank = shard_batch(batch, world_size=1, rank=0, gradient_accumulation_steps=2)
        assert two_ranks == one_rank and sorted(i for mb in one_rank for i in mb) == sorted(batch)
        for a, b in zip(two_ranks, one_rank):
            assert torch.equal(pad_batch([examples[i] for i in a], 0)["input_ids"], pad_batch([examples[i] for i in b], 0)["input_ids"])
    with pytest.raises(ValueError, match="does not split"):
        shard_batch(list(range(6)), world_size=4, rank=0, gradient_accumulation_steps=1)


# ---------------------------------------------------------------- sources, splits, generated rows


def test_train_eval_split_is_deterministic_and_disjoint():
    rows = [{"i": i} for i in range(40)]
    train, evals = train_eval_split(rows, 0.1, seed=1)
    assert len(evals) == 4 and len(train) == 36
    assert train_eval_split(rows, 0.1, seed=1) == (train, evals)
    assert {r["i"] for r in train}.isdisjoint(r["i"] for r in evals)


def test_parquet_json_and_saved_dataset_sources_load_the_same_rows(tmp_path):
    import datasets

    rows = [_row(SINGLE, enable_thinking=True), _row(SINGLE, enable_thinking=False)]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    for source in ("d.parquet", "saved", "d.json"):
        assert load_rows(str(tmp_path / source)) == rows, source
    with pytest.raises(FileNotFoundError):
        load_rows(str(tmp_path / "missing.jsonl"))
    folder = tmp_path / "repo" / "data"
    folder.mkdir(parents=True)
    _write_jsonl(folder / "train.jsonl", rows[:1])
    _write_jsonl(folder / "test.jsonl", rows[1:])
    assert load_rows(str(tmp_path / "repo"), split="test") == rows[1:]
    assert load_rows(str(tmp_path / "repo"), split=EVAL_SPLITS) == rows[1:]  # validation is absent, test is next


def test_prepare_data_from_files_with_eval_path_and_holdout(tmp_path, tiny_tokenizer):
    train_path = _write_jsonl(tmp_path / "train.jsonl", [_long_row(f"It is {i}.") for i in range(20)] + [{"messages": []}])
    eval_path = _write_jsonl(tmp_path / "eval.jsonl", [GOOD] * 3)
    cfg = DataConfig(path=train_path, eval_path=eval_path, on_bad_row="skip", reasoning=ReasoningDataConfig(no_think_fraction=0.5, truncated_budget_fraction=0.1))
    data = prepare_data(cfg, "sft", tiny_tokenizer, max_seq_len=512, seed=0)
    assert data.stats["bad_rows_skipped"] == 1 and data.stats["no_think"] == 10 and data.stats["truncated_budget"] == 2
    assert len(data.train.examples) == 20 and len(data.eval.examples) == 3
    holdout = load_splits(DataConfig(path=train_path, eval_fraction=0.25, on_bad_row="skip"), "sft", seed=0)
    assert (len(holdout.train), len(holdout.eval)) == (15, 5)


class _FakeEnv:
    """A stand-in for envs.registry's environments: a + b with a worked trace."""

    def __init__(self, name):
        self.name = name

    def generate(self, n, seed):
        rng = random.Random(seed)
        return [types.SimpleNamespace(id=f"{self.name}-{seed}-{i}", a=rng.randint(0, 999), b=rng.randint(0, 999), meta={}) for i in range(n)]

    def reset(self, task):
        return [{"role": "user", "content": f"[{self.name}] {task.a} + {task.b}?"}]

    def demonstrate(self, task):
        return [{"role": "assistant", "content": f"<think>{task.a} plus {task.b}</think>{task.a + task.b}"}]

    def corrupt(self, task, rng):
        return [{"role": "assistant", "content": f"<think>guess</think>{task.a + task.b + rng.randint(1, 9)}"}]

    def self_checks(self):
        return []


def test_generated_rows_mix_environments_by_share_deterministically(monkeypatch):
    fake = types.ModuleType("envs.registry")
    fake.make_env = lambda name, params=None: _FakeEnv(name)
    monkeypatch.setitem(sys.modules, "envs.registry", fake)
    cfg = GeneratedData(envs={"math": 0.75, "code": 0.25}, num_train=40, num_eval=8, seed=5)
    train, evals = generated_rows(cfg, "sft")
    assert [sum(r["env"] == e for r in train) for e in ("math", "code")] == [30, 10]
    assert len(evals) <= 8 and {r["messages"][0]["content"] for r in evals}.isdisjoint(r["messages"][0]["content"] for r in train)
    assert generated_rows(cfg, "sft") == (train, evals)
    assert [r["env"] for r in train[:10]] != ["math"] * 10  # shuffled together
    pairs, _ = generated_rows(cfg, "preference")
    for pair in pairs:
        validate_preference_row(pair)
    assert pairs == generated_rows(cfg, "preference")[0]
    assert [r["prompt"] for r in pairs] == [r["messages"][:1] for r in train]
