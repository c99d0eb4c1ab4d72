"""Waiting for actors to set up, with a deadline that names who is stuck and what it was doing.

An actor's set-up is a short chain of Ray calls (each a :class:`Step`: who, what, its ref), run
in order on that actor. :func:`wait_setup` returns when every call is done, raises the first
failure as soon as it happens, and past the deadline raises :class:`SetupTimeout` (exit 2)
listing, for each unfinished actor, the call it is in: the first of its steps not done yet. A
failure a recipe key can fix is worded by :func:`align.actor_errors.explain`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from align.actor_errors import explain
from align.errors import AlignError


class SetupTimeout(AlignError, RuntimeError):
    """An actor did not finish setting up within ``cluster.setup_timeout_s``."""


@dataclass(frozen=True)
class Step:
    actor: str  # "learner 1 (rank 1)"
    what: str  # "Learner.build_engine: building the DeepSpeed engine"
    ref: Any  # its Ray ObjectRef


def deadline_in(timeout_s: float) -> float:
    return time.monotonic() + timeout_s


def stuck(steps: Sequence[Step], done: set[Any]) -> list[str]:
    """``"<actor>: <what>"`` for each actor's first step not in ``done``, in actor order.

    >>> s = [Step("learner 0", "a", 1), Step("learner 0", "b", 2), Step("learner 1", "a", 3), Step("learner 1", "b", 4)]
    >>> stuck(s, done={1, 3})
    ['learner 0: b', 'learner 1: b']
    """
    out: dict[str, str] = {}
    for s in steps:
        if s.ref not in done and s.actor not in out:
            out[s.actor] = f"{s.actor}: {s.what}"
    return list(out.values())


def wait_setup(steps: Sequence[Step], deadline: float, timeout_s: float, knob: str = "cluster.setup_timeout_s") -> None:
    """Block until every step is done (raising the first failure at once), or raise :class:`SetupTimeout`."""
    import ray

    pending = [s.ref for s in steps]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            waiting = set(pending)
            lines = stuck(steps, {s.ref for s in steps if s.ref not in waiting})
            raise SetupTimeout(
                f"set-up did not finish within {timeout_s:.0f} s ({knob}); still running:\n  "
                + "\n  ".join(lines)
                + f"\nIf it is only slow (a large model, a loaded machine), raise {knob}; otherwise the actor's log "
                "(the Ray session's logs folder, /tmp/ray/session_latest/logs on this machine) says where it waits."
            )
        try:
            ray.get(ready)
        except Exception as e:
            step, e = _first_failure(steps, next(s for s in steps if s.ref == ready[0]), e)
            _read_the_rest([s.ref for s in steps])
            hint = explain(step.actor, step.what, e)
            if hint is None:
                raise e  # the first failure, with its traceback: no recipe key fixes it
            raise hint from e


def _first_failure(steps: Sequence[Step], failed: Step, error: Exception) -> tuple[Step, Exception]:
    """The first of ``failed``'s actor's steps that failed, with its error.

    An actor runs its calls in order, so once one fails the next fail too (``build_engine`` after a
    failed ``load_model`` finds no model), and ``ray.wait`` may hand over a later one first: the
    user needs the first, the cause. The earlier calls are finished, so reading them does not wait.
    """
    import ray

    for s in steps:
        if s is failed:
            break
        if s.actor == failed.actor:
            try:
                ray.get(s.ref)
            except Exception as e:
                return s, e
    return failed, error


def _read_the_rest(refs: list[Any], within_s: float = 1.0) -> None:
    """Read the errors of the calls that fail along with the first (within ``within_s``), so that
    Ray does not print each one's traceback as an "unhandled error" after the user's message."""
    import ray

    done, _ = ray.wait(refs, num_returns=len(refs), timeout=within_s)
    for ref in done:
        try:
            ray.get(ref)
        except Exception:  # noqa: BLE001 - already reported through the first failure
            pass
