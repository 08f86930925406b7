"""Errors kdepth raises at its edges.

Every message says what was received, what is allowed and how to fix it. The CLI turns these
into a one-line message and a non-zero exit instead of a traceback.
"""


class KdepthError(Exception):
    """Base class for errors a user can act on."""


class ConfigError(KdepthError, ValueError):
    """A configuration key or value is unknown or invalid."""


class DataError(KdepthError, ValueError):
    """A data file or source is missing, unreadable or inconsistent.

    Args:
        path: the file (or source) the problem is about.
        reason: what is wrong with it, said so that the user can fix it.
    """

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
