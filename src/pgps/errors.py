"""The one exception type a user sees as a clean one-line error (no traceback)."""


class PGPSError(Exception):
    """A user-facing problem: the message names the file or value and what is wrong."""
