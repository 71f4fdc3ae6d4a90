"""The one family of exceptions the library raises for bad input.

The CLI catches :class:`AuditError` only, prints its message as one line on stderr and exits with
code 2; any other exception is a bug and keeps its traceback.
"""


class AuditError(Exception):
    """Bad input: a message of the form "expected X, got Y; do Z"."""
