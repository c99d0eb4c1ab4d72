"""Guards: non-finite steps and failing environments stop the run (exit 3) with what went bad and where."""

import io
from types import SimpleNamespace

import pytest
from rich.console import Console

import align.cli
from align.algorithms.rl.batch import Scored, select_groups
from align.errors import RunStopped
from align.guards import EnvFailureGuard, NonFiniteGuard


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=400, highlight=False), out


def test_nonfinite_steps_in_a_row_stop_the_job_naming_metric_and_steps() -> None:
    con, out = _console()
    guard = NonFiniteGuard("stop", 3, con)
    guard.after_step(1, {"loss": 2.0, "grad_norm": 1.0})
    guard.after_step(2, {"loss": float("nan"), "grad_norm": 1.0, "nonfinite_skipped": 1.0})
    guard.after_step(3, {"loss": 1.5, "grad_norm": 0.5})  # a good step resets the count
    guard.after_step(4, {"loss": float("nan"), "grad_norm": float("inf"), "nonfinite_skipped": 1.0})
    guard.after_step(5, {"loss": float("nan"), "grad_norm": float("nan"), "nonfinite_skipped": 1.0})
    assert "step 2: loss nan is not finite; the update was skipped" in out.getvalue()
    with pytest.raises(RunStopped, match=r"3 steps in a row .* \(steps 4-6; first: loss nan, grad_norm inf at step 4\)"):
        guard.after_step(6, {"loss": float("nan"), "grad_norm": 2.0, "nonfinite_skipped": 1.0})


def test_skip_step_goes_on_but_non_finite_weights_always_stop() -> None:
    con, _ = _console()
    guard = NonFiniteGuard("skip_step", 1, con)
    for step in range(1, 6):
        guard.after_step(step, {"loss": float("nan"), "grad_norm": float("nan"), "nonfinite_skipped": 1.0})
    with pytest.raises(RunStopped, match=r"step 6: the weights are no longer finite \(4 parameter tensors .* the update itself overflowed"):
        guard.after_step(6, {"loss": 3.0, "grad_norm": 1.0, "nonfinite_params": 4.0})


def _traj(env: str, task: str, error: str | None = None, reward: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(env=env, task=SimpleNamespace(id=task), info={"error": error} if error else {}, reward=reward)


def test_failing_environment_warns_with_first_error_and_stops_after_k_steps() -> None:
    con, out = _console()
    guard = EnvFailureGuard(0.5, 2, con)
    ok = [_traj("math", f"m{i}") for i in range(4)]
    broken = [_traj("flaky", f"f{i}", "RuntimeError: boom\nsecond line") for i in range(3)] + [_traj("flaky", "f3")]
    assert guard.after_rollout(1, ok + broken) == "errors flaky 75% math 0%"
    assert "step 1: environment 'flaky' failed 3/4 samples (75% > grpo.max_env_error_rate=0.5); first error, sample f0: RuntimeError: boom" in out.getvalue()
    guard.after_rollout(2, ok + broken[2:])  # 1/2 failed: not above the share, the count starts over
    guard.after_rollout(3, ok + broken)
    with pytest.raises(RunStopped, match=r"step 4: environment 'flaky' failed 3/4 .* 2 steps in a row .* sample f0"):
        guard.after_rollout(4, ok + broken)


def test_groups_kept_only_by_reward_functions_after_env_errors_are_dropped_unless_allowed() -> None:
    # A broken environment: every sample an error with reward 0; totals differ only by a length bonus.
    broken = Scored([_traj("x", "a", "RuntimeError: down"), _traj("x", "a", "RuntimeError: down")], [0.1, -0.2])
    # A healthy environment, both samples correct: the length bonus is the signal on purpose.
    solved = Scored([_traj("x", "c", reward=1.0), _traj("x", "c", reward=1.0)], [1.1, 0.8])
    real = Scored([_traj("x", "b", reward=1.0), _traj("x", "b")], [1.1, -0.2])
    assert select_groups([broken, solved, real], 3, dynamic_sampling=True) == ([broken, solved, real], [])
    assert select_groups([broken, solved, real], 3, dynamic_sampling=True, env_signal=True) == ([solved, real], [broken])
    assert select_groups([broken, real], 2, dynamic_sampling=False, env_signal=True) == ([broken, real], [])  # nothing filtered


def test_cli_exits_3_when_a_guard_stops_the_run(monkeypatch, capsys) -> None:
    def job(loaded, resume):
        raise RunStopped("step 2: environment 'flaky' failed 4/4 samples")

    monkeypatch.setitem(align.cli.JOBS, "sft", job)
    assert align.cli.main(["sft", "--recipe", "tiny-sft", "output_dir=/tmp/align-guard-test-unused"]) == 3
    assert "run stopped: step 2: environment 'flaky' failed 4/4 samples" in capsys.readouterr().err
