"""The one error type a user of the zoo sees.

Every error a user can cause (an unknown model name, a corrupt weights file, an
input of the wrong shape) is raised as :class:`ZooError` with a one-line
message that says what was wrong and what to do. Text taken from a file or a
server (a pickled class name, an exception of a library) may hold line breaks
or terminal escapes: :func:`one_line` makes it one printable line, and a
``ZooError`` always prints as one line.
"""


def one_line(text, limit: int | None = None) -> str:
    """``text`` as one printable line (whitespace runs -> one space, other control characters -> ``?``)."""
    s = " ".join(str(text).split())
    s = "".join(c if c.isprintable() else "?" for c in s)
    return s if limit is None or len(s) <= limit else s[: limit - 3] + "..."


class ZooError(Exception):
    """A user-facing error: one line, what went wrong and what to do."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class WeightsError(ZooError):
    """A weights file is missing, corrupt, unsafe or of the wrong kind."""


class OfflineError(WeightsError):
    """A weights file is needed but the zoo may not (or cannot) download it."""
