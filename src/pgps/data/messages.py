"""One-line errors for the data verbs, whatever the input: the CLI promises one line per problem.

Messages carry names the user does not control (members of a downloaded tarball, files in a dataset folder,
text from nibabel or tarfile), and any of them can hold a line break. ``one_line`` escapes control characters;
``user_errors`` applies it to every PGPSError a verb raises and turns a stray OSError (disk full, permission
denied, I/O error) into the same kind of line, naming the file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from pgps.errors import PGPSError, one_line

__all__ = ["PGPSError", "one_line", "os_error_line", "squeeze", "user_errors"]
T = TypeVar("T")


def squeeze(exc: BaseException) -> str:
    """An exception's message on one line with its whitespace runs collapsed (nibabel and tarfile span lines)."""
    return one_line(" ".join(str(exc).split()))


def os_error_line(exc: OSError) -> str:
    """``<file>: <what went wrong>`` for an OSError."""
    where = exc.filename if exc.filename is not None else "(unknown file)"
    return one_line(f"{where}: {exc.strerror or exc}")


def user_errors(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a verb's ``main``: every error leaves it as one PGPSError line."""

    @functools.wraps(main)
    def wrapped(*args: object, **kwargs: object) -> T:
        try:
            return main(*args, **kwargs)
        except PGPSError as exc:
            raise PGPSError(one_line(exc)) from None
        except OSError as exc:
            raise PGPSError(os_error_line(exc)) from None

    return wrapped
