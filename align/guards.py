"""Guards that stop a run before it trains on garbage: non-finite numbers, failing environments.

Both raise :class:`align.errors.RunStopped` (the CLI exits 3) with what went bad, at which step,
and what to do; the drivers call them before anything is published, so ``final/`` never holds
non-finite weights and a run whose environment fails on every sample does not exit 0.

- :class:`NonFiniteGuard`, after every optimizer step: a non-finite ``loss`` or ``grad_norm``
  means the learner skipped the update (see ``Learner._skip_if_nonfinite`` for where it can);
  ``learner.max_nonfinite_steps`` such steps in a row stop the job (``learner.on_nonfinite:
  stop``), or never do (``skip_step``). Weights that are no longer finite always stop it.
- :class:`EnvFailureGuard`, after every RL rollout: each environment's error rate, printed every
  step; above ``grpo.max_env_error_rate`` a red warning with the first error and its sample;
  ``grpo.max_env_failing_steps`` such steps in a row stop the run.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape

from align.errors import RunStopped


@dataclass
class NonFiniteGuard:
    policy: str  # learner.on_nonfinite: stop | skip_step
    limit: int  # learner.max_nonfinite_steps
    console: Console
    streak: list[tuple[int, str]] = field(default_factory=list)  # (step, what was bad) of the current run of bad steps

    def after_step(self, step: int, metrics: dict[str, float]) -> None:
        """Check one optimizer step's metrics (``loss``, ``grad_norm``, and the learner's counts)."""
        bad = ", ".join(f"{k} {metrics[k]}" for k in ("loss", "grad_norm") if k in metrics and not math.isfinite(metrics[k]))
        damaged = int(metrics.get("nonfinite_params", 0))
        if damaged:
            cause = f"{bad} at that step" if bad else "loss and grad_norm were finite, so the update itself overflowed"
            raise RunStopped(
                f"step {step}: the weights are no longer finite ({damaged} parameter tensors hold NaN or inf; {cause}). "
                "Stopped without writing final/ or a checkpoint. Lower learner.lr or learner.max_grad_norm and rerun "
                "(--resume starts from the last checkpoint, written before this step)."
            )
        if not bad:
            self.streak = []
            return
        self.streak.append((step, bad))
        skipped = metrics.get("nonfinite_skipped", 0) > 0
        self.console.print(
            f"[bold red]step {step}: {bad} is not finite; "
            + ("the update was skipped[/]" if skipped else "this learner setup cannot skip the update[/]")
        )
        if self.policy == "stop" and len(self.streak) >= self.limit:
            first_step, first_bad = self.streak[0]
            raise RunStopped(
                f"{len(self.streak)} steps in a row with a non-finite loss or gradient norm (steps {first_step}-{step}; "
                f"first: {first_bad} at step {first_step}); learner.max_nonfinite_steps={self.limit}. Stopped without "
                "writing final/. Check the data and learner.lr, or set learner.on_nonfinite=skip_step to go on."
            )


@dataclass
class EnvFailureGuard:
    max_rate: float  # grpo.max_env_error_rate
    limit: int  # grpo.max_env_failing_steps
    console: Console
    streak: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def after_rollout(self, step: int, trajectories: Sequence[Any]) -> str:
        """Check one step's trajectories; returns the per-environment error rates for the step line."""
        per_env: dict[str, list[Any]] = defaultdict(list)
        for t in trajectories:
            per_env[t.env].append(t)
        parts = []
        for env, ts in sorted(per_env.items()):
            failed = [t for t in ts if t.info.get("error")]
            rate = len(failed) / len(ts)
            parts.append(f"{env} {rate:.0%}")
            if rate <= self.max_rate:
                self.streak[env] = 0
                continue
            self.streak[env] += 1
            first = failed[0]
            what = f"environment '{env}' failed {len(failed)}/{len(ts)} samples ({rate:.0%} > grpo.max_env_error_rate={self.max_rate:g})"
            error = str(first.info["error"]).strip().splitlines()[0][:300]
            self.console.print(f"[bold red]step {step}: {escape(what)}; first error, sample {escape(str(first.task.id))}: {escape(error)}[/]")
            if self.streak[env] >= self.limit:
                raise RunStopped(
                    f"step {step}: {what}, {self.streak[env]} steps in a row (grpo.max_env_failing_steps={self.limit}). "
                    f"First error of this step, sample {first.task.id}: {error}. Fix the environment (try "
                    f"`align envs test {env}`), or raise grpo.max_env_error_rate if these failures are expected."
                )
        return "errors " + " ".join(parts)
