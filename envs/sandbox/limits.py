"""The limits of one run (:class:`SandboxConfig`) and the bootstrap that applies them.

The bootstrap runs inside the sandbox (or as the rlimits-only child), sets the rlimits and the
priority, drops to the fresh uid when the caller was root, then runs the program as
``__main__`` in the same interpreter (one interpreter start-up per execution, not two). It must
stay tiny and import nothing beyond os/resource/sys: its arguments are plain strings, not JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxConfig:
    """Limits for one execution. Units are in the names; ``None`` means "derive a default".

    ``cpu_s`` defaults to the wall timeout rounded up (CPU time can only exceed wall time with
    threads or children). ``max_processes`` counts every process and thread of the program.
    ``python`` picks another interpreter (its prefix is bound read-only); ``site_packages``
    lets it see its own site-packages (e.g. numpy installed there), ``extra_ro_binds`` adds
    host folders read-only at the same path. ``bwrap_path`` (or ``$ALIGN_BWRAP``) overrides
    which bwrap runs.
    """

    timeout_s: float = 10.0
    memory_mb: int = 512
    cpu_s: int | None = None
    max_processes: int = 32
    max_file_mb: int = 16
    max_open_files: int = 64
    tmp_mb: int = 64
    output_limit_bytes: int = 64 * 1024
    nice: int = 10
    allow_rlimits_only: bool = False
    bwrap_path: str | None = None
    python: str | None = None
    site_packages: bool = False
    extra_ro_binds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.memory_mb < 16 or self.max_processes < 1 or self.output_limit_bytes < 1:
            raise ValueError(f"invalid sandbox limits: {self}")


BOOTSTRAP = r"""
import os, resource, sys
_, nice, uid, guard, limits, main, *argv = sys.argv
try:
    os.nice(int(nice))
except OSError:
    pass
for item in limits.split(","):
    name, soft, hard = item.split(":")
    soft, hard = int(soft), int(hard)
    if name == "NPROC" and guard == "1":
        # No user namespace here: the kernel counts every task of this user, so allow those
        # already running (bounded by the system's task count: a loose but finite cap).
        tasks = int(open("/proc/loadavg").read().split()[3].split("/")[1])
        soft, hard = soft + tasks, hard + tasks
    resource_id = getattr(resource, "RLIMIT_" + name)
    current = resource.getrlimit(resource_id)[1]
    if current != resource.RLIM_INFINITY:
        hard = min(hard, current)
    resource.setrlimit(resource_id, (min(soft, hard), hard))
if uid != "-":
    os.setgroups([])
    os.setresgid(int(uid), int(uid), int(uid))
    os.setresuid(int(uid), int(uid), int(uid))
if guard == "1":
    # rlimits-only: stay as the program's parent, so os.kill(os.getppid()) hits this process and
    # not the caller; as a child subreaper, kill whatever the program left behind when it exits.
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        while True:
            try:
                kids = open(f"/proc/self/task/{os.getpid()}/children").read().split()
            except OSError:
                kids = []
            for k in kids:
                try:
                    os.kill(int(k), 9)
                except OSError:
                    pass
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
        os._exit(code if code >= 0 else 128 - code)
sys.argv = [main, *argv]
def _run(main=main, g=globals()):
    code = compile(open(main, "rb").read(), main, "exec")
    b = g["__builtins__"]
    g.clear()
    g.update(__name__="__main__", __file__=main, __builtins__=b, __doc__=None)
    exec(code, g)
_run()
"""


def rlimit_spec(config: SandboxConfig) -> str:
    cpu = config.cpu_s if config.cpu_s is not None else max(1, math.ceil(config.timeout_s))
    mem = config.memory_mb * 1024 * 1024
    fsize = config.max_file_mb * 1024 * 1024
    limits = [
        ("CPU", cpu, cpu + 1),  # soft: SIGXCPU (reported as timeout); hard: SIGKILL
        ("AS", mem, mem),
        ("NPROC", config.max_processes, config.max_processes),
        ("FSIZE", fsize, fsize),
        ("NOFILE", config.max_open_files, config.max_open_files),
        ("CORE", 0, 0),
    ]
    return ",".join(f"{name}:{soft}:{hard}" for name, soft, hard in limits)


def bootstrap_argv(
    config: SandboxConfig, python: str, main: str, argv: Sequence[str], uid: int | None, guard: bool
) -> list[str]:
    flags = ["-I"] if config.site_packages else ["-I", "-S"]
    spec = [str(config.nice), "-" if uid is None else str(uid), "1" if guard else "0", rlimit_spec(config), main]
    return [python, *flags, "-c", BOOTSTRAP, *spec, *argv]
