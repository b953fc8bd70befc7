"""The one error type a user of the zoo sees.

Every error a user can cause (an unknown model name, a corrupt weights file, an
input of the wrong shape) is raised as :class:`ZooError` with a one-line
message that says what was wrong and what to do.
"""


class ZooError(Exception):
    """A user-facing error: one line, what went wrong and what to do."""


class WeightsError(ZooError):
    """A weights file is missing, corrupt, unsafe or of the wrong kind."""


class OfflineError(WeightsError):
    """A weights file is needed but the zoo may not (or cannot) download it."""
