"""`align dpo` and `align rm` as a user runs them, from a tiny SFT start built here.

The jobs run through the CLI's ``main`` in this process, sharing one embedded Ray session (a
subprocess per job would pay Python start-up and ``ray.init`` each time; the learners are Ray
actors either way). Bad-row checks run the ``align`` command in a subprocess: they fail before
Ray starts. The start checkpoint is a few SFT steps of the tiny policy (``align sft``): from random weights
the preference signal generalizes to held-out pairs much more slowly.

Each test checks that the measured quantity moved: held-out preference accuracy (DPO), held-out
pairwise accuracy (Bradley-Terry), held-out error against predicting the train mean (regression).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from align.cli import main
from align.config.schema import GeneratedData
from align.data import generated_rows

ROOT = Path(__file__).resolve().parents[2]
ALIGN = [sys.executable, "-m", "align.cli"]
# Pair sources whose mistakes a few dozen steps can learn to spot (instruction-following pairs
# differ in word counts and stay near chance at this scale; the recipes use them too).
ENVS = {"math": 0.4, "code": 0.2, "tool_use": 0.4}
# The easy grades (envs/grades.py) the thresholds below were set on: math levels 1-3, code grade 1,
# one-call tool tasks. The harder grades need more than a few dozen steps to tell apart.
EASY = {"math": {"difficulty": [1, 2, 3]}, "code": {"grade_weights": {1: 1.0}}, "tool_use": {"kinds": ["calculator", "lookup"]}}
EASY_OVERRIDE = "data.generated.params={math: {difficulty: [1, 2, 3]}, code: {grade_weights: {1: 1.0}}, tool_use: {kinds: [calculator, lookup]}}"
SMALL = ["learner.micro_batch_size_per_device=16", "checkpoint.every_steps=1000"]


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_AUTH_MODE="disabled")
    return subprocess.run(ALIGN + args, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _evals(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if r["split"] == "eval"]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from align.cluster import init_ray

    init_ray(num_cpus=4)  # logical slots: a DPO job holds a policy and a reference learner
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def start(tmp_path_factory, ray_session) -> Path:
    """A few SFT steps of the tiny policy on generated demonstrations: what `align sft` would hand on."""
    out = tmp_path_factory.mktemp("start") / "sft"
    code = main(["sft", "--recipe", "tiny-sft", f"output_dir={out}", "cluster.num_learners=1", "learner.zero_stage=0",
                 "data.generated.num_train=480", "data.generated.num_eval=16", "tokenizer.vocab_size=320",
                 "learner.micro_batch_size_per_device=16", "learner.warmup_steps=4", "sft.max_steps=50",
                 "sft.eval_every_steps=50", "sft.num_eval_samples_to_generate=0", *SMALL])  # fmt: skip
    assert code == 0
    return out / "final"


def _pairs(num_train: int, num_eval: int) -> tuple[list[dict], list[dict]]:
    return generated_rows(GeneratedData(envs=ENVS, params=EASY, num_train=num_train, num_eval=num_eval, seed=0), "preference")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dpo_raises_heldout_preference_accuracy(start: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "dpo"
    code = main(["dpo", "--recipe", "tiny-dpo", f"init_from={start}", f"output_dir={out}", *SMALL,
                 "data.generated.envs={math: 0.4, code: 0.2, tool_use: 0.4}", EASY_OVERRIDE, "data.generated.num_train=480", "data.generated.num_eval=160", "learner.lr=2e-3", "learner.warmup_steps=2",
                 "dpo.loss=sigmoid", "dpo.beta=0.1", "dpo.max_steps=50", "dpo.eval_every_steps=50", "dpo.num_eval_samples_to_generate=0"])  # fmt: skip
    assert code == 0
    first, last = _evals(out)[0], _evals(out)[-1]
    assert first["step"] == 0 and first["accuracy"] == 0.0 and abs(first["margin"]) < 1e-4  # policy == reference
    assert last["step"] == 50 and last["accuracy"] >= 0.65 and last["margin"] > 0.1, last
    summary = json.loads((out / "summary.json").read_text())
    assert summary["median_step_time_s"] > 0 and (out / "final" / "config.json").is_file() and (out / "loss.png").is_file()
    assert "eval preference accuracy 0.000 ->" in capsys.readouterr().out


def test_bad_preference_rows_fail_naming_the_row(tmp_path: Path, capsys) -> None:
    good, _ = _pairs(6, 0)
    bad = [
        {k: v for k, v in good[0].items() if k != "rejected"},  # missing field
        dict(good[1], chosen=[{"role": "assistant", "content": "  "}]),  # empty response
        dict(good[2], rejected=good[2]["chosen"]),  # identical chosen and rejected
    ]
    expectations = [(1, "missing 'rejected'"), (3, "empty assistant turn"), (5, "identical")]
    for n, ((index, reason), row) in enumerate(zip(expectations, bad, strict=True)):
        data = _write_jsonl(tmp_path / f"bad{index}.jsonl", [*good[:index], row, *good[index:]])
        args = ["dpo", "--recipe", "tiny-dpo", f"data.path={data}", f"output_dir={tmp_path / 'never'}"]
        if n == 0:  # the installed command, once; the others through the same main() in this process
            proc = _run(args, timeout=120)
            code, stderr = proc.returncode, proc.stderr
        else:
            code, stderr = main(args), capsys.readouterr().err
        assert code == 2, stderr[-2000:]
        message = " ".join(stderr.split())
        assert f"row {index} of {data}" in message and f"line {index + 1}" in message and reason in message, message
        assert "on_bad_row=skip" in message
    assert not (tmp_path / "never").exists()


def test_bradley_terry_rm_skips_bad_rows_and_beats_chance(start: Path, tmp_path: Path, capsys) -> None:
    train, evals = _pairs(480, 160)
    bad = [{"prompt": "hi", "chosen": "same", "rejected": "same"}, {"prompt": "hi", "chosen": ""}, {"chosen": "x", "rejected": "y"}]
    data = _write_jsonl(tmp_path / "pairs.jsonl", bad[:1] + train[:200] + bad[1:] + train[200:])
    # A pair_kind on the held-out rows (here: alternating labels) gets its own accuracy, as the chat family's pairs do.
    eval_data = _write_jsonl(tmp_path / "eval.jsonl", [{**r, "pair_kind": "ab"[i % 2]} for i, r in enumerate(evals)])
    out = tmp_path / "rm"
    code = main(["rm", "--recipe", "tiny-rm", f"init_from={start}", f"output_dir={out}", *SMALL,
                 f"data.path={data}", f"data.eval_path={eval_data}", "data.on_bad_row=skip", "learner.lr=1e-3",
                 "rm.max_steps=100", "rm.eval_every_steps=100"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["bad_rows_skipped"] == 3 and summary["data"]["train_rows"] == 480
    assert "bad_rows_skipped 3" in capsys.readouterr().out
    last, n = _evals(out)[-1], summary["data"]["eval_rows"]
    # Beyond chance, beyond noise: the 95% interval's lower end (normal approximation over the
    # held-out pairs; about 110 once pairs that training also has are dropped) is above 0.5.
    low = last["accuracy"] - 1.96 * (last["accuracy"] * (1 - last["accuracy"]) / n) ** 0.5
    assert last["step"] == 100 and n >= 80 and low > 0.5, (last, n)
    # The same pairs' scores in two parts: the overall accuracy is a weighted mean of the two.
    assert min(last["accuracy_a"], last["accuracy_b"]) - 0.01 <= last["accuracy"] <= max(last["accuracy_a"], last["accuracy_b"]) + 0.01, last
    info = json.loads((out / "final" / "reward_head.json").read_text())
    assert info["attribute_names"] == ["reward"] and (out / "final" / "model.safetensors").is_file()


def _rated(pairs: list[dict]) -> list[dict]:
    """Two rated rows per pair: correctness 1/0 (chosen/rejected) and a length score (characters / 40)."""
    rows = []
    for p in pairs:
        for side, correct in (("chosen", 1.0), ("rejected", 0.0)):
            text = p[side][0]["content"]
            rows.append({"prompt": p["prompt"], "response": text, "attributes": {"correctness": correct, "length": len(text) / 40}})
    return rows


def test_regression_rm_beats_predicting_the_mean(start: Path, tmp_path: Path) -> None:
    train, evals = _pairs(320, 96)
    data = _write_jsonl(tmp_path / "rated.jsonl", _rated(train))
    eval_data = _write_jsonl(tmp_path / "rated_eval.jsonl", _rated(evals))
    out = tmp_path / "rm"
    code = main(["rm", "--recipe", "tiny-rm", f"init_from={start}", f"output_dir={out}", *SMALL,
                 f"data.path={data}", f"data.eval_path={eval_data}", "rm.objective=regression",
                 "rm.attributes={correctness: 1.0, length: 0.1}", "learner.lr=1e-3", "rm.max_steps=40", "rm.eval_every_steps=40"])  # fmt: skip
    assert code == 0
    first, last = _evals(out)[0], _evals(out)[-1]
    for name in ("correctness", "length"):
        assert f"mse_{name}" in last and f"mse_mean_baseline_{name}" in last
        assert last[f"mse_{name}"] < first[f"mse_{name}"], name
    assert last["mse_length"] < last["mse_mean_baseline_length"], last
    assert last["mse_correctness"] + last["mse_length"] < last["mse_mean_baseline_correctness"] + last["mse_mean_baseline_length"], last
    assert 0.0 <= last["pairwise_accuracy"] <= 1.0
    info = json.loads((out / "final" / "reward_head.json").read_text())
    assert info["attribute_names"] == ["correctness", "length"] and info["attribute_weights"] == {"correctness": 1.0, "length": 0.1}


@pytest.mark.slow
def test_dpo_with_lora_and_the_adapters_disabled_as_reference(start: Path, tmp_path: Path) -> None:
    out = tmp_path / "dpo_lora"
    code = main(["dpo", "--recipe", "tiny-dpo", f"init_from={start}", f"output_dir={out}", *SMALL,
                 "data.generated.num_train=480", "data.generated.num_eval=96", "learner.lr=3e-3", "learner.lora={r: 16, alpha: 32}",
                 "dpo.reference=lora_disabled", "dpo.loss=sigmoid", "dpo.label_smoothing=0.1",
                 "dpo.max_steps=100", "dpo.eval_every_steps=100", "dpo.num_eval_samples_to_generate=0"])  # fmt: skip
    assert code == 0
    first, last = _evals(out)[0], _evals(out)[-1]
    assert first["accuracy"] == 0.0 and abs(first["margin"]) < 1e-4  # adapters start at zero: policy == reference
    assert last["accuracy"] >= 0.65 and last["margin"] > 0.05, last
    assert (out / "final" / "model.safetensors").is_file()  # merged weights, loadable without peft
