"""The ``logging`` section: optional Weights & Biases and MLflow mirrors of ``metrics.jsonl``.

Both are off unless their key is set. ``metrics.jsonl`` and TensorBoard are always written.
"""

from __future__ import annotations

from typing import Literal

from align.config.sections import Strict


class WandbConfig(Strict):
    project: str
    # offline: written under <run>/wandb, uploaded later with `wandb sync`; disabled: nothing at all.
    mode: Literal["online", "offline", "disabled"] = "online"
    entity: str | None = None
    name: str | None = None  # run name; default: the output_dir's folder name


class MlflowConfig(Strict):
    # null: a file store in <run>/mlruns (`mlflow ui --backend-store-uri <run>/mlruns` shows it).
    tracking_uri: str | None = None
    experiment: str = "align"
    name: str | None = None  # run name; default: the output_dir's folder name


class LoggingConfig(Strict):
    wandb: WandbConfig | None = None
    mlflow: MlflowConfig | None = None
