"""What one sandboxed run reports: :class:`SandboxResult`, its status, and how an exit code maps to it."""

from __future__ import annotations

import json
import signal
from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["ok", "error", "timeout", "memory", "killed"]


class SandboxUnavailable(RuntimeError):
    """bwrap could not start here; the message says why and how to fix it."""


@dataclass
class SandboxResult:
    """What happened. ``status``: ok (exit 0), error (non-zero exit), timeout (wall clock or CPU
    limit), memory (the address-space limit was hit), killed (ended by a signal)."""

    status: Status
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    isolation: Literal["bwrap", "rlimits-only"] = "bwrap"
    signal: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



def classify(rc: int, stderr: str, timed_out: bool) -> tuple[Status, int | None, str | None]:
    """Map an exit code to a status. bwrap (and the rlimits-only guard) report death by signal
    N as exit code 128+N; Popen reports a directly killed child as -N."""
    if timed_out:
        return "timeout", None, "SIGKILL"
    signum = -rc if rc < 0 else (rc - 128 if 128 < rc < 128 + 65 else None)
    try:
        sig = signal.Signals(signum).name if signum else None
    except ValueError:  # a program's own exit code in 129..192 that is no signal number
        sig = None
    if rc == 0:
        return "ok", 0, None
    tail = stderr[-2000:]
    if sig == "SIGXCPU":
        return "timeout", rc, sig
    if "MemoryError" in tail or "Cannot allocate memory" in tail or "out of memory" in tail.lower():
        return "memory", rc, sig
    if sig is not None:
        return "killed", rc, sig
    return "error", rc, None
