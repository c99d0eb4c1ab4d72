"""HelpSteer-rated responses as GenRM training data: pairs by helpfulness, ratings as verdict scores,
malformed rows named by file, row, line and field (exit 2 through the CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.config.schema import DataConfig
from align.data import load_splits
from align.data.errors import DataError
from align.data.helpsteer import ATTRIBUTES
from rewards.genrm.data import judgement_rows
from rewards.genrm.verdict import parse_verdict

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "data" / "helpsteer.jsonl"


def _row(prompt: str, response: str, helpfulness: int, **ratings: object) -> dict:
    return {"prompt": prompt, "response": response, **dict.fromkeys(ATTRIBUTES, 2), "helpfulness": helpfulness, **ratings}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_example_file_gives_pairs_by_helpfulness_with_ratings_as_scores() -> None:
    splits = load_splits(DataConfig(path=str(EXAMPLE), eval_fraction=0.0), "helpsteer", seed=0)
    # 4 prompts x 2 responses; the animal prompt's two answers are equally helpful: no pair.
    assert len(splits.train) == 3 and splits.eval == []
    by_prompt = {p["prompt"][0]["content"]: p for p in splits.train}
    pair = by_prompt["What is 7-7?"]
    assert pair["chosen"][0]["content"] == "\\boxed{0}" and "Thanks for asking" in pair["rejected"][0]["content"]
    assert pair["scores"] == [5, 4] and pair["ratings"][1]["verbosity"] == 3
    assert [ref.line for ref in splits.train_refs] == [1, 3, 5]  # each pair named by its chosen row's line
    rows = judgement_rows([by_prompt["What is 59+63?"]])
    verdicts = [parse_verdict(r["messages"][-1]["content"]) for r in rows]
    assert [(v.a, v.b) for v in verdicts] == [(5, 2), (2, 5)]  # helpfulness 4 vs 1 -> 5 vs 2, both orders
    assert "A is less helpful." in rows[1]["messages"][-1]["content"]


def test_pairs_stay_whole_across_the_eval_split(tmp_path: Path) -> None:
    rows = [_row(f"q{i}", r, h) for i in range(20) for r, h in (("good", 4), ("bad", 1))]
    splits = load_splits(DataConfig(path=str(_write(tmp_path / "hs.jsonl", rows)), eval_fraction=0.25), "helpsteer", seed=0)
    assert len(splits.train) + len(splits.eval) == 20 and 0 < len(splits.eval) < 20
    assert all(p["chosen"][0]["content"] == "good" for p in splits.train + splits.eval)


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"correctness": 7}, "field 'correctness' is 7, expected an integer rating from 0 to 4"),
        ({"coherence": True}, "field 'coherence' is True"),
        ({"verbosity": 2.5}, "field 'verbosity' is 2.5"),
        ({"complexity": "high"}, "field 'complexity' is 'high'"),
        ({"helpfulness": None}, "missing field 'helpfulness'"),
        ({"response": ""}, "response is '', expected a non-empty string"),
        ({"prompt": " "}, "prompt is empty"),
        ({"prompt": [{"role": "robot", "content": "q"}]}, "prompt"),
    ],
)
def test_malformed_rows_name_file_row_line_and_field(tmp_path: Path, bad: dict, named: str) -> None:
    path = _write(tmp_path / "hs.jsonl", [_row("q", "a", 4), {**_row("q", "b", 1), **bad}])
    with pytest.raises(DataError) as e:
        load_splits(DataConfig(path=str(path)), "helpsteer", seed=0)
    assert f"row 1 of {path} (line 2): {named}" in str(e.value)


def test_only_ties_is_an_error_that_says_why(tmp_path: Path) -> None:
    path = _write(tmp_path / "ties.jsonl", [_row("q", "a", 3), _row("q", "b", 3)])
    with pytest.raises(DataError, match="different helpfulness"):
        load_splits(DataConfig(path=str(path)), "helpsteer", seed=0)


def test_cli_exits_2_in_seconds_naming_the_bad_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "hs.jsonl", [_row("q", "a", 4), _row("q", "b", 9)])
    cmd = [sys.executable, "-m", "align.cli", "rm", "--recipe", "tiny-genrm", f"data.path={path}",
           "rm.genrm.data_format=helpsteer", f"output_dir={tmp_path / 'run'}"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"row 1 of {path} (line 2): field 'helpfulness' is 9" in proc.stderr + proc.stdout
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "run" / "init").exists()  # nothing was built


def test_a_file_too_small_for_one_batch_exits_2_naming_file_rows_and_key(tmp_path: Path) -> None:
    """The example file's 8 rated rows give 3 pairs, 6 judgement rows: fewer than tiny-genrm's batch of 16.
    It was a ValueError traceback from BatchPlan (exit 1) after Ray had started; now it is found before the
    start checkpoint is even loaded (so this test needs no trained checkpoint)."""
    cmd = [sys.executable, "-m", "align.cli", "rm", "--recipe", "tiny-genrm", f"data.path={EXAMPLE}", "data.eval_fraction=0.0",
           "rm.genrm.data_format=helpsteer", f"output_dir={tmp_path / 'run'}", f"init_from={tmp_path / 'none'}"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    out = " ".join((proc.stderr + proc.stdout).split())  # rich wraps long lines
    assert proc.returncode == 2, out[-2000:]
    assert "Traceback" not in out
    assert f"{EXAMPLE}: 8 rows gave 6 judgement rows" in out and "fewer than one global batch of 16" in out
    assert "set learner.micro_batch_size_per_device=6" in out
    assert time.perf_counter() - t0 < 30
