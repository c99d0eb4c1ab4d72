"""Run untrusted Python in a bubblewrap sandbox, with rlimits and a wall-clock timeout.

Shared by the ``code`` environment, ``tool_use``'s python tool and ``align sandbox exec``. The
modules: ``limits`` (:class:`SandboxConfig`, the in-sandbox bootstrap), ``bwrap`` (the command
line), ``runner`` (:func:`run_program`, :class:`SandboxPool`), ``result`` (:class:`SandboxResult`),
``cli`` (``align sandbox exec``).

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


from envs.sandbox.bwrap import find_bwrap, sandbox_python
from envs.sandbox.limits import SandboxConfig
from envs.sandbox.result import SandboxResult, SandboxUnavailable, Status
from envs.sandbox.runner import SandboxPool, default_concurrency, run_program, sandbox_problem, shared_pool

__all__ = [
    "SandboxConfig", "SandboxPool", "SandboxResult", "SandboxUnavailable", "Status", "default_concurrency", "find_bwrap",
    "run_program", "sandbox_problem", "sandbox_python", "shared_pool",
]  # fmt: skip
