"""Data errors use the file's own row numbers and lines, and name bad bytes and empty files."""

import json
import random
import re

import pytest

from align.config.schema import DataConfig, ReasoningDataConfig
from align.data import DataError, load_checked_rows, load_splits, prepare_data, validate_sft_row

NO_MIX = ReasoningDataConfig(no_think_fraction=0.0, truncated_budget_fraction=0.0)


def _sft(i: int, user: str = "What is 2 + 3?") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": f"It is {i}."}]}


def _pair(i: int, prompt: str = "What is 2 + 3?") -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": f"It is {i}."}],
            "rejected": [{"role": "assistant", "content": f"It is not {i}."}]}  # fmt: skip


def _write(path, rows, blank_every: int = 0) -> str:
    """JSONL with a blank line after every ``blank_every`` rows, so line numbers differ from row indices."""
    out = []
    for i, r in enumerate(rows):
        out.append(json.dumps(r))
        if blank_every and i % blank_every == blank_every - 1:
            out.append("")
    path.write_text("\n".join(out) + "\n")
    return str(path)


def _line_of(path: str, row: int) -> int:
    nonblank = [n for n, line in enumerate(open(path).read().split("\n"), start=1) if line.strip()]
    return nonblank[row]


@pytest.mark.parametrize(("kind", "make", "bad_row", "reason"), [
    ("sft", _sft, 40, "no assistant token falls within max_seq_len"),
    ("preference", _pair, 50, "the prompt fills max_seq_len"),
], ids=["sft", "dpo"])  # fmt: skip
def test_rows_rejected_at_tokenization_keep_the_file_row_and_line(tmp_path, tiny_tokenizer, kind, make, bad_row, reason) -> None:
    long = " ".join(["carry the one"] * 200)
    rows = [make(i) for i in range(60)]
    rows[bad_row] = make(bad_row, long)
    path = _write(tmp_path / "data.jsonl", rows, blank_every=7)
    cfg = DataConfig(path=path, eval_fraction=0.1, reasoning=NO_MIX)
    # A seed whose holdout keeps the bad row in train and takes rows before it, so its position
    # among train rows is not its file row.
    seed = next(s for s in range(50) if rows[bad_row] in (t := load_splits(cfg, kind, seed=s).train) and t.index(rows[bad_row]) < bad_row)
    line = _line_of(path, bad_row)
    with pytest.raises(DataError, match=rf"row {bad_row} of {re.escape(path)} \(train\) \(line {line}\): {reason}"):
        prepare_data(cfg, kind, tiny_tokenizer, max_seq_len=64, seed=seed)


def test_bytes_that_are_not_utf8_name_the_row_and_line_and_can_be_skipped(tmp_path) -> None:
    path = tmp_path / "train.jsonl"
    lines = [json.dumps(_sft(i)).encode() for i in range(5)]
    lines[3] = lines[3].replace(b"It is 3", b"It is caf\xe9")  # Latin-1, not UTF-8
    path.write_bytes(b"\n".join(lines[:2] + [b""] + lines[2:]) + b"\n")
    with pytest.raises(DataError, match=r"row 3 of .*train.jsonl \(line 5\): not UTF-8 text \(byte 0xe9"):
        load_checked_rows(str(path), validate_sft_row)
    good, skipped = load_checked_rows(str(path), validate_sft_row, on_bad_row="skip")
    assert (len(good), skipped) == (4, 1)


def test_empty_or_all_skipped_data_names_the_file(tmp_path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(empty))}: no usable training rows: it has no rows"):
        load_splits(DataConfig(path=str(empty)), "sft", seed=0)
    bad = _write(tmp_path / "bad.jsonl", [{"messages": []}] * 3)
    with pytest.raises(DataError, match=rf"{re.escape(bad)}: no usable training rows: all 3 rows were bad and skipped"):
        load_splits(DataConfig(path=bad, on_bad_row="skip"), "sft", seed=0)


def test_all_rows_skipped_at_tokenization_names_the_file(tmp_path, tiny_tokenizer) -> None:
    long = " ".join(["carry the one"] * 200)
    path = _write(tmp_path / "long.jsonl", [_sft(i, long) for i in range(4)])
    cfg = DataConfig(path=path, eval_fraction=0.0, on_bad_row="skip", reasoning=NO_MIX)
    with pytest.raises(DataError, match=rf"{re.escape(path)}: no usable training rows: all 4 were skipped at tokenization"):
        prepare_data(cfg, "sft", tiny_tokenizer, max_seq_len=64, seed=0)


def test_missing_data_file_is_a_user_error(tmp_path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        load_splits(DataConfig(path=str(tmp_path / "nope.jsonl")), "sft", seed=random.Random(0).randint(0, 9))


def test_rl_task_files_name_bad_bytes_and_empty_files(tmp_path) -> None:
    from align.algorithms.rl.tasks import load_tasks
    from align.config.schema import EnvSpec

    path = tmp_path / "tasks.jsonl"
    task = {"id": "t0", "prompt": [{"role": "user", "content": "1+1?"}], "answer": "2"}
    path.write_bytes(json.dumps(task).encode() + b"\n" + b'{"id": "t1", "prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"row 1 of .*tasks.jsonl \(line 2\): not UTF-8 text"):
        load_tasks(EnvSpec(name="math", data_path=str(path)), None, 10, 0, "train")
    path.write_text("\n")
    with pytest.raises(DataError, match=r"tasks.jsonl: no usable tasks \(envs entry 'math', data_path"):
        load_tasks(EnvSpec(name="math", data_path=str(path)), None, 10, 0, "train")


def test_a_bad_row_report_lists_the_first_ten_bad_rows_and_the_count(tmp_path) -> None:
    from align.data.errors import BadRowsError

    rows = [_sft(i) for i in range(40)]
    bad = list(range(3, 40, 3))  # 13 bad rows
    for i in bad:
        rows[i] = {"messages": [{"role": "user", "content": "no answer"}]}
    path = _write(tmp_path / "train.jsonl", rows, blank_every=5)
    with pytest.raises(BadRowsError) as info:
        load_checked_rows(path, validate_sft_row)
    msg = str(info.value)
    assert msg.startswith(f"13 bad rows in {path}; the first 10:")
    for i in bad[:10]:
        assert f"  row {i} (line {_line_of(path, i)}): messages has no assistant turn" in msg
    assert f"row {bad[10]} " not in msg and "data.on_bad_row=skip" in msg
    good, skipped = load_checked_rows(path, validate_sft_row, on_bad_row="skip")
    assert (len(good), skipped) == (27, 13)


def test_a_mistyped_local_folder_is_named_at_once_not_tried_on_the_hub(tmp_path, monkeypatch) -> None:
    import time

    (tmp_path / "rm" / "prefs_hf").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"rm/prefs_hf_typo: no such local file or folder \(the nearest existing folder is rm/\)"):
        load_splits(DataConfig(path="rm/prefs_hf_typo"), "preference", seed=0)
    assert time.monotonic() - t0 < 2


def test_an_unreachable_hub_fails_in_seconds_with_both_readings(monkeypatch) -> None:
    """``datasets`` retries an unreachable hub for about 25 s; the probe answers at once.
    HF_ENDPOINT points at a closed local port, so no network is touched."""
    import time

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"prefs_typo: not a local file or folder, and the Hub \(http://127.0.0.1:9\) could not be reached"):
        load_splits(DataConfig(path="prefs_typo"), "sft", seed=0)
    assert time.monotonic() - t0 < 5
