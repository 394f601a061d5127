"""nnU-Net's progress.png at a bounded cost.

nnU-Net redraws a 3000x5400 px figure after every epoch, synchronously: ~0.6 s on a CPU core, a
fixed cost per epoch that does not shrink with the patch, so PGPS's short early epochs pay it at a
much larger share than constant-patch epochs do. Drawing it in a background thread was measured
and rejected: the thread holds the GIL through matplotlib and slowed every training step (32^3
steps inside training 0.56 -> 0.61 s on 2 CPU cores). Instead the plot is throttled: after a draw that took ``d``
seconds, the next one waits until ``d / MAX_SHARE`` seconds have passed, so drawing takes at most
``MAX_SHARE`` of the wall time; the newest state is always drawn at the end of training. The PNG is
written to a temp file and renamed: never a torn image.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

PNG_NAME = "progress.png"
MAX_SHARE = 0.02  # at most 2 % of the wall time goes to drawing progress.png


class ThrottledProgressPlot:
    def __init__(self, max_share: float = MAX_SHARE) -> None:
        if not 0 < max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], got {max_share}")
        self.max_share = max_share
        self._next_at: float | None = None
        self._pending: tuple[Any, str] | None = None
        self.drawn = 0
        self.skipped = 0
        self.last_drawn_epochs = 0  # epochs the newest progress.png shows

    def request(self, local_logger: Any, output_folder: str) -> bool:
        """Draw now if the share allows it (True), else remember the request for ``flush``."""
        if self._next_at is not None and time.monotonic() < self._next_at:
            self._pending = (local_logger, output_folder)
            self.skipped += 1
            return False
        self._draw(local_logger, output_folder)
        return True

    def flush(self) -> None:
        """Draw the newest state if a request was skipped since the last draw."""
        if self._pending is not None:
            self._draw(*self._pending)

    def _draw(self, local_logger: Any, output_folder: str) -> None:
        t0 = time.monotonic()
        draw_progress_png(local_logger, output_folder)
        self._next_at = t0 + (time.monotonic() - t0) / self.max_share
        self._pending = None
        self.drawn += 1
        self.last_drawn_epochs = min(len(v) for v in local_logger.my_fantastic_logging.values())


def draw_progress_png(local_logger: Any, output_folder: str) -> None:
    """nnU-Net's own drawing code (``LocalLogger.plot_progress_png``) into a temp dir, then renamed."""
    with tempfile.TemporaryDirectory(prefix=".progress_", dir=output_folder) as tmp:
        local_logger.plot_progress_png(tmp)
        os.replace(os.path.join(tmp, PNG_NAME), os.path.join(output_folder, PNG_NAME))
