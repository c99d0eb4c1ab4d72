"""Public dataset formats: each loads from JSONL, and from a ``save_to_disk`` folder and a parquet
file with column mapping; bad rows are named (file, line, field) and ``on_bad_row`` is honoured."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import datasets
import pytest

from align.algorithms.rl.tasks import load_tasks
from align.config.schema import EnvSpec
from align.data.errors import DataError
from envs.public_data import load_env_tasks
from envs.registry import make_env
from envs.tool_use.function_calling import score_turn

ROOT = Path(__file__).resolve().parents[2]
DATA = {
    "gsm8k": ("math", ROOT / "envs/math/data/gsm8k_style.jsonl"),
    "math": ("math", ROOT / "envs/math/data/math_style.jsonl"),
    "mbpp": ("code", ROOT / "envs/code/data/mbpp_style.jsonl"),
    "humaneval": ("code", ROOT / "envs/code/data/humaneval_style.jsonl"),
    "ifeval": ("instruction_following", ROOT / "envs/instruction_following/data/ifeval_style.jsonl"),
    "openai_tools": ("tool_use", ROOT / "envs/tool_use/data/openai_tools.jsonl"),
}
# Per format: the dataset's columns renamed (old -> new) and the mapping that undoes it. Tool
# schemas and calls go into the folder as JSON strings, as public tool-calling sets store them.
RENAMES = {
    "gsm8k": ({"question": "q", "answer": "final"}, {"prompt": "q", "answer": "final"}),
    "math": ({"problem": "body", "solution": "worked"}, {"problem": "body", "solution": "worked"}),
    "mbpp": ({"text": "description", "test_list": "tests"}, {"prompt": "description", "test_list": "tests"}),
    "humaneval": ({"test": "check_fn", "canonical_solution": "ref"}, {"test": "check_fn", "solution": "ref"}),
    "ifeval": ({"instruction_id_list": "ids", "key": "uid"}, {"instruction_id_list": "ids", "id": "uid"}),
    "openai_tools": ({"tools": "functions", "tool_calls": "calls"}, {"tools": "functions", "tool_calls": "calls"}),
}


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _same(a: Any, b: Any) -> None:
    assert [(t.id, t.prompt, t.answer, t.meta) for t in a] == [(t.id, t.prompt, t.answer, t.meta) for t in b]


@pytest.mark.parametrize("fmt", sorted(DATA))
def test_format_loads_from_jsonl_and_from_a_renamed_folder_and_parquet(fmt: str, tmp_path: Path) -> None:
    env, path = DATA[fmt]
    tasks, skipped = load_env_tasks(env, str(path))
    assert skipped == 0 and len(tasks) == len(_rows(path)) and all(t.env == env for t in tasks)

    renames, columns = RENAMES[fmt]
    rows = []
    for row in _rows(path):
        row = {renames.get(k, k): v for k, v in row.items()}
        if fmt == "openai_tools":
            row = {k: json.dumps(v) if k in ("functions", "calls") else v for k, v in row.items()}
        rows.append(row)
    keys = {k: None for row in rows for k in row}  # a table has every column in every row (None where absent)
    table = datasets.Dataset.from_list([{**keys, **row} for row in rows])
    folder, parquet = tmp_path / fmt, tmp_path / f"{fmt}.parquet"
    table.save_to_disk(str(folder))
    table.to_parquet(str(parquet))
    for source in (folder, parquet):
        mapped, skipped = load_env_tasks(env, str(source), columns)
        assert skipped == 0
        _same(mapped, tasks)
    with pytest.raises(DataError, match="column .* is missing"):  # the same folder without the mapping
        load_env_tasks(env, str(folder), {k: f"{v}_typo" for k, v in columns.items()})


def test_formats_read_gsm8k_working_math_boxes_and_humaneval_bodies() -> None:
    gsm = load_env_tasks("math", str(DATA["gsm8k"][1]))[0]
    assert [t.answer for t in gsm] == ["72", "10", "63", "210", "6"]
    assert gsm[0].meta["trace"].startswith("Natalia sold 48/2") and "####" not in gsm[0].meta["trace"]
    assert [t.answer for t in load_env_tasks("math", str(DATA["math"][1]))[0]] == ["\\frac{5}{6}", "6", "\\sqrt{2}", "(-2, 2)"]
    he = load_env_tasks("code", str(DATA["humaneval"][1]))[0][0]
    assert he.id == "Example/0" and he.meta["tests"]["kind"] == "check" and he.answer.startswith("def add(") and "return x + y" in he.answer
    mbpp = load_env_tasks("code", str(DATA["mbpp"][1]))[0][3]
    assert mbpp.meta["tests"] == {"kind": "asserts", "asserts": ["assert dict_sum(DATA) == 6", "assert dict_sum({}) == 0"],
                                  "setup": "DATA = {'a': 1, 'b': 2, 'c': 3}"}  # fmt: skip
    ifeval = load_env_tasks("instruction_following", str(DATA["ifeval"][1]))[0]
    assert ifeval[0].answer == [{"kind": "no_commas"}, {"kind": "word_count", "min_words": 12}]
    assert ifeval[3].answer[2] == {"kind": "word_count", "max_words": 19}  # IFEval "less than 20"
    assert "demonstration" not in ifeval[4].meta  # a row without a reference response


def test_dotted_column_reaches_into_nested_values(tmp_path: Path) -> None:
    """DAPO-17K keeps the gold answer at reward_model.ground_truth and the prompt as messages."""
    rows = [{"prompt": [{"role": "user", "content": "What is 2+3?"}], "reward_model": {"ground_truth": "5", "style": "rule"}}]
    tasks, _ = load_env_tasks("math", str(_write_jsonl(tmp_path / "dapo.jsonl", rows)), {"answer": "reward_model.ground_truth"})
    assert tasks[0].answer == "5" and tasks[0].prompt == rows[0]["prompt"]


def test_a_malformed_row_is_named_or_skipped(tmp_path: Path) -> None:
    good = {"question": "1+1?", "answer": "2"}
    path = _write_jsonl(tmp_path / "m.jsonl", [good, "", {"question": "2+2?"}, "{not json", good])
    with pytest.raises(DataError) as e:
        load_env_tasks("math", str(path))
    # The third row sits on line 3 (after a blank line); the message names file, line and field.
    assert str(path) in str(e.value) and "(line 3)" in str(e.value) and "field 'answer'" in str(e.value)
    assert "envs[].on_bad_row=skip" in str(e.value)
    tasks, skipped = load_env_tasks("math", str(path), on_bad_row="skip")
    assert skipped == 2 and [t.prompt[0]["content"] for t in tasks] == ["1+1?", "1+1?"]


@pytest.mark.parametrize(
    ("env", "row", "needle"),
    [
        ("code", {"text": "f", "test_list": ["f(1) == 2"]}, "field 'test_list': expected a non-empty list of assert lines"),
        ("code", {"prompt": "def f():", "test": "assert True", "entry_point": "f"}, "field 'test': expected a HumanEval check"),
        ("instruction_following", {"prompt": "hi", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}, "field 'kwargs'"),
        ("instruction_following", {"prompt": "hi", "instruction_id_list": ["keywords:existence"], "kwargs": [{}]}, "needs 'keywords'"),
        ("tool_use", {"prompt": "hi", "tools": "[{bad", "tool_calls": []}, "field 'tools': not a JSON list"),
        ("tool_use", {"prompt": "hi", "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
         "field 'tools': f's parameters are not a JSON schema"),
        ("tool_use", {"prompt": "hi", "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}], "tool_calls": [{"name": "f", "arguments": {}}]},
         "field 'tool_calls': call 0: f arguments: 'x' is a required property"),
        ("math", {"problem": "p", "solution": "no box here"}, "field 'solution': no final \\boxed"),
    ],
)  # fmt: skip
def test_bad_fields_are_named(env: str, row: dict[str, Any], needle: str, tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_env_tasks(env, str(_write_jsonl(tmp_path / "bad.jsonl", [row])))
    assert needle in str(e.value) and "(line 1)" in str(e.value)


def test_unsupported_ifeval_ids_are_listed_in_one_error(tmp_path: Path) -> None:
    rows = [
        {"key": 1, "prompt": "a", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"key": 2, "prompt": "b", "instruction_id_list": ["detectable_format:title", "punctuation:no_comma"], "kwargs": [{}, {}]},
        {"key": 3, "prompt": "c", "instruction_id_list": ["language:response_language", "detectable_format:title"], "kwargs": [{"language": "fr"}, {}]},
    ]  # fmt: skip
    path = _write_jsonl(tmp_path / "if.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_env_tasks("instruction_following", str(path))
    msg = str(e.value)
    assert "detectable_format:title (line 2, line 3)" in msg and "language:response_language (line 3)" in msg
    assert "punctuation:no_comma (" not in msg and "Supported: length_constraints:number_words" in msg
    tasks, skipped = load_env_tasks("instruction_following", str(path), on_bad_row="skip")
    assert [t.id for t in tasks] == ["1"] and skipped == 2


def test_sources_that_do_not_exist_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.jsonl: no such file or folder"):
        load_env_tasks("math", str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="gsm8k_dir: no such file or folder"):  # a mistyped local folder, not a Hub lookup
        load_env_tasks("math", str(tmp_path / "gsm8k_dir"))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "train.txt").write_text("x")
    with pytest.raises(DataError, match="not one written by Dataset.save_to_disk .*train.txt"):
        load_env_tasks("math", str(tmp_path / "plain"))
    with pytest.raises(DataError, match="math has no field 'promt'; its fields are id, prompt"):
        load_env_tasks("math", str(DATA["gsm8k"][1]), {"promt": "question"})


def test_align_task_rows_still_load_as_they_are() -> None:
    tasks, _ = load_env_tasks("math", str(ROOT / "envs/math/data/examples.jsonl"))
    assert tasks and all(t.env == "math" and t.id for t in tasks)


def test_rl_data_path_splits_a_public_file_into_train_and_eval() -> None:
    spec = EnvSpec(name="math", data_path=str(DATA["gsm8k"][1]), num_eval=1)
    env = make_env("math")
    train, evals = load_tasks(spec, env, 100, 0, "train"), load_tasks(spec, env, 1, 0, "eval")
    assert len(train) == 4 and len(evals) == 1
    assert {t.answer for t in train + evals} == {"72", "10", "63", "210", "6"}


def test_rl_data_path_with_no_usable_rows_is_named(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "no answer"}])
    spec = EnvSpec(name="math", data_path=str(path), on_bad_row="skip")
    with pytest.raises(DataError, match="bad.jsonl: no usable tasks .*'math', data_path; 1 bad rows skipped"):
        load_tasks(spec, make_env("math"), 10, 0, "train")


def test_function_call_scoring_names_what_is_wrong() -> None:
    task = load_env_tasks("tool_use", str(DATA["openai_tools"][1]))[0][0]
    env = make_env("tool_use")
    assert env.reset(task) == task.prompt and '"name": "get_weather"' in task.prompt[0]["content"]

    def verdict(action: str) -> tuple[bool | None, str]:
        r = asyncio.run(env.step(task, env.reset(task), action))
        assert r.done
        return r.correct, r.info["reason"]

    call = '<tool_call>{"name": "get_weather", "arguments": %s}</tool_call>'
    assert verdict(call % '"{\\"city\\": \\"Paris\\", \\"unit\\": \\"celsius\\"}"')[0] is True  # arguments as a JSON string
    ok, reason = verdict(call % '{"unit": "kelvin"}')
    assert not ok and "'city' is a required property" in reason
    ok, reason = verdict('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"</tool_call>')
    assert not ok and reason.startswith("malformed tool call (bad JSON")
    ok, reason = verdict("<think>" + call % '{"city": "Paris", "unit": "celsius"}')  # the call only inside unclosed thinking
    assert not ok and "got no call" in reason
    assert score_turn(task, call % '{"city": "Paris", "unit": "celsius"}' * 2).correct is False  # an extra call


def test_code_reasons_name_the_failure() -> None:
    from envs.code import generate

    env = make_env("code")
    io_task = generate.io_example()
    wrong = asyncio.run(env.step(io_task, [], "```python\nprint(int(input()) + 2)\n```"))
    right = asyncio.run(env.step(io_task, [], "```python\nprint(int(input()) * 2)\n```"))
    assert wrong.info["reason"].endswith("; wrong output on a stdin/stdout case") and right.info["reason"].startswith("passed 3/3")
    he = load_env_tasks("code", str(DATA["humaneval"][1]))[0][0]
    crash = asyncio.run(env.step(he, [], "```python\ndef add(x, y):\n    return x - y\n```"))
    assert crash.info["reason"] == "passed 0/1 tests; error: AssertionError"


def _closed_port() -> int:
    """A local TCP port nothing listens on: bound, then released."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_hub_fails_within_seconds_naming_the_field_and_the_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network in tests: the Hub endpoint is a closed local port (datasets alone retries ~30 s)."""
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    spec = EnvSpec(name="math", data_path="nosuchorg/gsm8k-typo")
    start = time.monotonic()
    with pytest.raises(DataError) as e:
        load_tasks(spec, make_env("math"), 10, 0, "train")
    assert time.monotonic() - start < 10
    message = str(e.value)
    assert message.startswith("envs entry 'math', data_path: nosuchorg/gsm8k-typo: not a local file or folder")
    assert "could not be reached" in message and "check the path" in message and "HF_HUB_OFFLINE=1" in message


def test_a_hub_id_not_in_the_cache_fails_at_once_in_offline_mode(tmp_path: Path) -> None:
    """``HF_HUB_OFFLINE=1`` is read when huggingface_hub is imported: a fresh process, the CLI, exit 2."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "align.cli", "envs", "test", "math", "--data", "nosuchorg/gsm8k-typo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert time.monotonic() - start < 30  # a process start and the datasets import; no retries
    err = " ".join(proc.stderr.split())
    assert "nosuchorg/gsm8k-typo: not a local file or folder, and not in the datasets cache" in err
    assert "while HF_HUB_OFFLINE is set" in err


def test_a_mistyped_hub_id_is_named_as_not_on_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """A local stand-in for the Hub answers 404 RepoNotFound, as huggingface.co does for an unknown id."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from huggingface_hub import constants

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        with pytest.raises(DataError, match="nosuchorg/gsm8k-typo: not a local file or folder, and no dataset of that id on the Hub"):
            load_env_tasks("math", "nosuchorg/gsm8k-typo")
    finally:
        server.shutdown()
