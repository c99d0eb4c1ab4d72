"""The base of every error meant for the user: the CLI prints its message and exits 2."""


class AlignError(Exception):
    """Bad input or a job that cannot run; the message says what was wrong, where, and what to do."""
