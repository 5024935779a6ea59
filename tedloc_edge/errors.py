"""The errors a user sees: one line naming the file and the fix, never a traceback.

    from tedloc_edge.errors import UserError      # also tedloc_edge.UserError and tedloc_edge.runtime.UserError
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. The CLI prints its message as one line (no traceback) and exits with 2.

    Messages name the file (and line or id) and the fix, e.g. "data/classes.txt:3: empty class name; ...".
    """


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an exception's message (its type name when it has none), cut to `limit`."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit] if limit else line
