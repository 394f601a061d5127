"""nnU-Net's progress.png, drawn off the training thread.

nnU-Net redraws a 3000x5400 px figure after every epoch, synchronously: ~0.6 s on a CPU core, a
fixed cost per epoch that does not shrink with the patch. At PGPS's small stages an epoch is short
(250 steps of ~24 ms on an H200), so that fixed cost eats a visible share of the saving. Here the
plot is drawn from a snapshot of the logged values in one background thread; while it draws, newer
requests replace each other (only the latest is drawn next), and ``close`` draws the final state
before training ends. The PNG is written to a temp file and renamed: never a torn image.
"""

from __future__ import annotations

import copy
import os
import tempfile
import threading
from typing import Any

PNG_NAME = "progress.png"


class BackgroundProgressPlot:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: tuple[dict, str] | None = None
        self._thread: threading.Thread | None = None
        self.drawn = 0  # plots written
        self.last_drawn_epochs = 0  # epochs the newest progress.png shows
        self.error: BaseException | None = None

    def submit(self, local_logger: Any, output_folder: str) -> None:
        """Queue a plot of ``local_logger``'s values as they are now (a deep copy: training goes on)."""
        snapshot = copy.deepcopy(local_logger.my_fantastic_logging)
        with self._lock:
            self._pending = (snapshot, output_folder)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._drain, name="pgps-progress-plot", daemon=True)
                self._thread.start()

    def _drain(self) -> None:
        while True:
            with self._lock:
                job, self._pending = self._pending, None
            if job is None:
                return
            try:
                self._draw(job)
            except BaseException as exc:  # a plot must never kill the training; close() reports it
                self.error = exc

    def close(self) -> None:
        """Wait until the latest submitted state is on disk; raise what drawing raised."""
        thread = self._thread
        if thread is not None:
            thread.join()
        with self._lock:
            job, self._pending = self._pending, None
        if job is not None:
            self._draw(job)
        if self.error is not None:
            error, self.error = self.error, None
            raise RuntimeError(f"drawing {PNG_NAME} failed: {error!r}") from error

    def _draw(self, job: tuple[dict, str]) -> None:
        draw_progress_png(*job)
        self.drawn += 1
        self.last_drawn_epochs = min(len(v) for v in job[0].values())


def draw_progress_png(logged: dict, output_folder: str) -> None:
    """nnU-Net's own drawing code, on a copy of its logged values, into a temp dir then renamed."""
    from nnunetv2.training.logging.nnunet_logger import LocalLogger

    logger = LocalLogger()
    logger.my_fantastic_logging = logged
    with tempfile.TemporaryDirectory(prefix=".progress_", dir=output_folder) as tmp:
        logger.plot_progress_png(tmp)
        os.replace(os.path.join(tmp, PNG_NAME), os.path.join(output_folder, PNG_NAME))
