"""W&B and MLflow mirror metrics.jsonl when configured (tested in their offline modes), and stay off otherwise."""

import json
import sys
import time
from pathlib import Path

import pytest

from align.config import load_recipe
from align.runlog import MetricsLog



def _recipe(tmp_path: Path, *overrides: str):
    return load_recipe("tiny-sft", [f"output_dir={tmp_path}", *overrides]).recipe


def _log_steps(run_dir: Path, recipe, steps, resume_from_step=None) -> None:
    log = MetricsLog(run_dir, resume_from_step=resume_from_step, recipe=recipe)
    for step in steps:
        log.log(step, "train", {"loss": 1.0 / step, "lr": 0.1})
    log.log(steps[-1], "eval", {"loss": 0.5, "note_is_not_a_number": "x"})
    log.close()


def test_mlflow_file_store_gets_every_metric_and_a_resume_continues_the_run(tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    recipe = _recipe(tmp_path, f"logging.mlflow={{tracking_uri: '{uri}', experiment: align-test}}")
    _log_steps(tmp_path, recipe, [1, 2, 3])
    run_id = json.loads((tmp_path / "loggers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/loss")] == [(3, 0.5)]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    _log_steps(tmp_path, recipe, [4, 5], resume_from_step=3)
    assert json.loads((tmp_path / "loggers.json").read_text())["mlflow"] == run_id
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4, 5]


def test_wandb_offline_run_records_the_metrics_and_the_recipe(tmp_path, monkeypatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    recipe = _recipe(tmp_path, "logging.wandb={project: align-test, mode: offline}", "learner.lr=0.004")
    log = MetricsLog(tmp_path, recipe=recipe)
    for step in (1, 2, 3):
        log.log(step, "train", {"loss": 1.0 / step})
    run = log._loggers[0].run
    assert run.settings.mode == "offline" and run.config["learner"]["lr"] == 0.004
    log.close()
    assert wandb.run is None  # finished
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1  # what `wandb sync` uploads later
    assert json.loads((tmp_path / "loggers.json").read_text())["wandb"] == files[0].stem.removeprefix("run-")
    # wandb 0.31 ships no reader for its offline log; its history items hold each key and value as
    # JSON text. Its writer (the wandb-core process) may still be flushing when finish() returns.
    deadline = time.monotonic() + 30
    while (data := files[0].read_bytes()).count(b"train/loss") < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    for value in (1.0, 0.5, 1 / 3):
        assert json.dumps(value).encode() in data
    assert data.count(b"train/loss") >= 3


def test_loggers_are_off_unless_configured(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # would raise ImportError if anything imported it
    monkeypatch.setitem(sys.modules, "mlflow", None)
    _log_steps(tmp_path, _recipe(tmp_path), [1, 2])
    assert not (tmp_path / "loggers.json").exists() and not (tmp_path / "wandb").exists() and not (tmp_path / "mlruns").exists()


def test_a_configured_logger_that_is_not_installed_says_how_to_install_it(tmp_path, monkeypatch) -> None:
    from align.loggers import LoggerSetupError

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(LoggerSetupError, match=r"logging.wandb is set but wandb is not installed: pip install -e \"\.\[loggers\]\""):
        MetricsLog(tmp_path, recipe=_recipe(tmp_path, "logging.wandb={project: p, mode: offline}"))
