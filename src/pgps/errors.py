"""The one exception type a user sees as a clean one-line error (no traceback), and the escaping that keeps
every such message on one line whatever names it carries."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PGPSError(Exception):
    """A user-facing problem: the message names the file or value and what is wrong."""


def one_line(text: object) -> str:
    """``text`` with each control character (newline, carriage return, tab, ESC ...) written as an escape."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
