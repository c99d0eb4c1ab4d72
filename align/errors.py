"""The base of every error meant for the user: the CLI prints its message and exits 2."""


class AlignError(Exception):
    """Bad input or a job that cannot run; the message says what was wrong, where, and what to do."""


class RunStopped(Exception):
    """A running job stopped by a guard (non-finite numbers, failing environments): the CLI exits 3.

    Not an :class:`AlignError`: the input was valid, the run went bad. The message says what
    went bad, at which step, and what to do.
    """
