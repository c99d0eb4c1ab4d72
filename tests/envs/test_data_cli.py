"""``align envs test NAME --data`` and ``align envs score`` on the shipped example files, through
align's real command line (the code rows run in the real sandbox)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from align.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    ("math", "envs/math/data/gsm8k_style.jsonl", "5/5 rows verify"),
    ("math", "envs/math/data/math_style.jsonl", "4/4 rows verify"),
    ("code", "envs/code/data/mbpp_style.jsonl", "4/4 rows verify"),
    ("code", "envs/code/data/humaneval_style.jsonl", "3/3 rows verify"),
    ("instruction_following", "envs/instruction_following/data/ifeval_style.jsonl", "4/4 rows verify"),
    ("tool_use", "envs/tool_use/data/openai_tools.jsonl", "4/4 rows verify"),
]
# data file stem -> the verdicts of its shipped .completions.jsonl
SCORES = {
    ("math", "envs/math/data/gsm8k_style"): {"correct": 3, "wrong": 2},
    ("code", "envs/code/data/mbpp_style"): {"correct": 1, "wrong": 3},
    ("instruction_following", "envs/instruction_following/data/ifeval_style"): {"correct": 2, "wrong": 1},
    ("tool_use", "envs/tool_use/data/openai_tools"): {"correct": 3, "wrong": 2},
}


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps to the terminal width; make it wide so rows stay on one line."""
    import envs.cli

    monkeypatch.setattr(envs.cli.out, "_width", 250)
    monkeypatch.setattr(envs.cli.err, "_width", 250)


@pytest.mark.parametrize(("env", "path", "share"), EXAMPLES, ids=[Path(p).stem for _, p, _ in EXAMPLES])
def test_envs_test_data_verifies_the_shipped_examples(env: str, path: str, share: str, capsys) -> None:
    assert main(["envs", "test", env, "--data", str(ROOT / path)]) == 0
    out = capsys.readouterr().out
    assert f"{env}: {share} against their own reference (100.0%)" in out
    assert ("1 row(s) without a reference" in out) == (env == "instruction_following")


def test_envs_test_data_names_rows_whose_reference_fails(tmp_path: Path, capsys) -> None:
    rows = [json.loads(line) for line in (ROOT / "envs/code/data/mbpp_style.jsonl").read_text().splitlines()]
    rows[1]["code"] = "def is_not_prime(n):\n    return n % 2 == 0"
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["envs", "test", "code", "--data", str(path), "--columns", "solution=code"]) == 1
    out = capsys.readouterr().out
    assert "3/4 rows verify against their own reference (75.0%)" in out
    assert "passed 2/4 tests; assert is_not_prime(2) == False failed (AssertionError)" in out


@pytest.mark.parametrize(("env", "stem"), list(SCORES), ids=[Path(s).name for _, s in SCORES])
def test_envs_score_writes_a_verdict_and_reason_per_row(env: str, stem: str, tmp_path: Path, capsys) -> None:
    output = tmp_path / "verdicts.jsonl"
    args = ["envs", "score", env, "--data", str(ROOT / f"{stem}.jsonl"), "--completions", str(ROOT / f"{stem}.completions.jsonl")]
    assert main([*args, "--output", str(output)]) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert Counter(r["verdict"] for r in records) == SCORES[(env, stem)]
    assert all(r["reason"] for r in records)
    out = capsys.readouterr().out
    assert f"{env}: {len(records)} completions scored" in out and f"wrote {len(records)} rows" in out
    by_id = {r["id"]: r for r in records}
    if env == "code":
        assert by_id["3"]["reward"] == 0.5 and "assert is_not_prime(2) == False failed" in by_id["3"]["reason"]
        assert by_id["17"]["reason"] == "no code in the answer"
        assert by_id["900"]["reason"] == "passed 0/2 tests; the tests did not report (the program exited before they ran)"
    if env == "instruction_following":
        assert by_id["1002"] == {**by_id["1002"], "verdict": "wrong", "reward": 0.5, "reason": "unmet: all lowercase"}
    if env == "tool_use":
        assert [r["verdict"] for r in records if r["id"] == "fc-3"] == ["wrong", "correct"]
        assert "got convert_currency" in by_id["fc-1"]["reason"] and '"amount": 200' in by_id["fc-1"]["reason"]
    if env == "math":
        assert [r["extracted"] for r in records] == ["72", "10", "62", None, "6"]


def test_envs_score_prints_jsonl_to_stdout(capsys) -> None:
    stem = ROOT / "envs/tool_use/data/openai_tools"
    assert main(["envs", "score", "tool_use", "--data", f"{stem}.jsonl", "--completions", f"{stem}.completions.jsonl"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["id"] for line in captured.out.splitlines()] == ["fc-0", "fc-1", "fc-2", "fc-3", "fc-3"]
    assert "tool_use: 5 completions scored" in captured.err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["envs", "test", "math", "--data", "no/such/file.jsonl"], "no/such/file.jsonl: no such file or folder"),
        (["envs", "test", "math", "--data", "envs/math/dta/"], "envs/math/dta/: no such file or folder"),
        (["envs", "test", "math", "--data", "envs/math/data/gsm8k_style.jsonl", "--columns", "prompt"], "expected FIELD=COLUMN"),
        (["envs", "score", "math", "--data", "envs/math/data/gsm8k_style.jsonl", "--completions", "nope.jsonl"], "nope.jsonl: no such completions file"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_naming_it(argv: list[str], needle: str, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import align.cli

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(align.cli.err, "_width", 250)
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_unsupported_ifeval_ids_exit_2_with_one_message(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import align.cli

    monkeypatch.setattr(align.cli.err, "_width", 400)
    path = tmp_path / "if.jsonl"
    rows = [{"key": i, "prompt": "p", "instruction_id_list": [iid], "kwargs": [{}]} for i, iid in enumerate(["detectable_format:title", "combination:two_responses"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["envs", "test", "instruction_following", "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unsupported instruction ids: combination:two_responses (line 2); detectable_format:title (line 1)" in err


def test_skip_bad_rows_flag(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import align.cli

    monkeypatch.setattr(align.cli.err, "_width", 400)
    path = tmp_path / "m.jsonl"
    path.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": ["4"]}\n')
    assert main(["envs", "test", "math", "--data", str(path)]) == 2
    assert "(line 2): field 'answer': expected a string or a number, got list" in capsys.readouterr().err
    assert main(["envs", "test", "math", "--data", str(path), "--skip-bad-rows"]) == 0
    out = capsys.readouterr().out
    assert "1/1 rows verify" in out and "1 bad row(s) skipped" in out
