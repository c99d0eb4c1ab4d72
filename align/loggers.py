"""Weights & Biases and MLflow: mirrors of ``metrics.jsonl``, each off unless ``logging.<name>`` is set.

:func:`open_loggers` starts the configured ones for a run; :class:`align.runlog.MetricsLog`
sends every record to them as ``<split>/<metric>`` at its step (what TensorBoard gets). The
resolved recipe goes with the run (W&B ``config``, MLflow ``recipe.json``). A resumed job
continues the same W&B / MLflow run: its id is kept in ``<run>/loggers.json``.

Limits: W&B refuses steps lower than one already logged, so after ``--resume`` the steps between
the checkpoint and the interruption are not redrawn there (``metrics.jsonl`` and TensorBoard
are); MLflow keeps both points of such a step. Install with ``pip install -e ".[loggers]"``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from align.config.loggers import LoggingConfig, MlflowConfig, WandbConfig
from align.errors import AlignError

IDS_FILE = "loggers.json"


class LoggerSetupError(AlignError):
    """A configured logger cannot start (not installed, bad settings)."""


class Logger(Protocol):
    def log(self, step: int, split: str, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _scalars(split: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {f"{split}/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _import(name: str, key: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        raise LoggerSetupError(f"{key} is set but {name} is not installed: pip install -e \".[loggers]\" (or remove {key})") from None


class WandbLogger:
    def __init__(self, cfg: WandbConfig, run_dir: Path, recipe: dict[str, Any], run_id: str | None) -> None:
        wandb = _import("wandb", "logging.wandb")
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, name=cfg.name or run_dir.name, mode=cfg.mode, dir=str(run_dir),
            config=recipe, id=run_id, resume="allow" if run_id else None, reinit="create_new",
        )  # fmt: skip
        self.id: str = self.run.id

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if values := _scalars(split, metrics):
            self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowLogger:
    """Through ``MlflowClient``: no process-global active run, so two jobs in one process do not mix."""

    def __init__(self, cfg: MlflowConfig, run_dir: Path, recipe: dict[str, Any], run_id: str | None) -> None:
        _import("mlflow", "logging.mlflow")
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        uri = cfg.tracking_uri or (run_dir.resolve() / "mlruns").as_uri()
        if uri.startswith("file:"):
            # MLflow 3.x keeps its file store in maintenance mode and refuses it unless asked: a store
            # in the run folder needs no server and no database, which is what the default is for.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            exp = self.client.get_experiment_by_name(cfg.experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(cfg.experiment)
            run_id = self.client.create_run(exp_id, run_name=cfg.name or run_dir.name).info.run_id
            self.client.log_dict(run_id, recipe, "recipe.json")
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.id = run_id

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        values = [self._metric(k, v, now, step) for k, v in _scalars(split, metrics).items()]
        if values:
            self.client.log_batch(self.id, metrics=values)

    def close(self) -> None:
        self.client.set_terminated(self.id)


def open_loggers(cfg: LoggingConfig, run_dir: Path, recipe: dict[str, Any], resume: bool) -> list[Logger]:
    """The configured loggers, started (or, on resume, reattached to the run they logged before)."""
    ids_path = run_dir / IDS_FILE
    ids = json.loads(ids_path.read_text()) if resume and ids_path.is_file() else {}
    loggers: dict[str, Any] = {}
    if cfg.wandb is not None:
        loggers["wandb"] = WandbLogger(cfg.wandb, run_dir, recipe, ids.get("wandb"))
    if cfg.mlflow is not None:
        loggers["mlflow"] = MlflowLogger(cfg.mlflow, run_dir, recipe, ids.get("mlflow"))
    if loggers:
        ids_path.write_text(json.dumps({name: lg.id for name, lg in loggers.items()}))
    return list(loggers.values())
