"""The one family of exceptions the library raises for bad input.

The CLI catches :class:`AuditError` only, prints its message as one line on stderr and exits with
code 2; any other exception is a bug and keeps its traceback.
"""


class AuditError(Exception):
    """Bad input: a message of the form "expected X, got Y; do Z"."""


class AuditWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as one line)."""


def warn(message: str) -> None:
    """Issue an :class:`AuditWarning` (one line on stderr under the CLI)."""
    import warnings

    warnings.warn(message, AuditWarning, stacklevel=3)
