"""Progress bars for the long data steps (download, MD5, extraction, validation): on a terminal only.

A bar is drawn on stderr when stderr is a terminal; in a log file or a pipe (DVC, SLURM, CI) nothing is drawn, so
logs keep only the one-line messages. tqdm is imported when a bar is made, so importing this module costs nothing.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Progress(Protocol):
    """What the data steps use of a bar (tqdm's interface; a no-op when stderr is not a terminal)."""

    def update(self, n: int = 1) -> Any: ...

    def close(self) -> None: ...

    def __enter__(self) -> Progress: ...

    def __exit__(self, *exc: object) -> None: ...


class _Silent:
    """The bar for logs: does nothing, so callers never test whether progress is shown."""

    def update(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def bar(description: str, total: int | None, unit: str = "B", initial: int = 0) -> Progress:
    """A progress bar on stderr when it is a terminal, else a silent stand-in. ``unit="B"`` scales to kB/MB/GB."""
    if not stderr_is_terminal():
        return _Silent()
    from tqdm import tqdm

    return tqdm(
        desc=description,
        total=total,
        initial=initial,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        file=sys.stderr,
        leave=True,
        dynamic_ncols=True,
    )
