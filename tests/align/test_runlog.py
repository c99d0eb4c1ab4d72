"""The run log: metrics.jsonl and TensorBoard agree after a resume."""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from align.runlog import MetricsLog, read_metrics


def _tensorboard_points(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _write(run_dir: Path, steps: range, value: float, resume_from_step: int | None) -> None:
    log = MetricsLog(run_dir, resume_from_step=resume_from_step)
    for step in steps:
        log.log(step, "train", {"loss": value + step})
    log.close()


def test_resume_shows_each_step_once_in_tensorboard(tmp_path: Path) -> None:
    _write(tmp_path, range(1, 6), 0.0, resume_from_step=None)
    _write(tmp_path, range(4, 6), 100.0, resume_from_step=3)  # the checkpoint was at step 3
    points = _tensorboard_points(tmp_path, "train/loss")
    assert points == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 104.0), (5, 105.0)]
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == points


def test_fresh_run_hides_an_earlier_runs_points(tmp_path: Path) -> None:
    _write(tmp_path, range(1, 6), 0.0, resume_from_step=None)
    _write(tmp_path, range(1, 4), 100.0, resume_from_step=None)
    assert _tensorboard_points(tmp_path, "train/loss") == [(1, 101.0), (2, 102.0), (3, 103.0)]
