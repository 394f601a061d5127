"""nnU-Net's progress.png drawn off the training thread (pgps.nnunet.progress), with nnU-Net's own
LocalLogger and matplotlib: the newest state always lands, on disk whole, and a drawing error
reaches the caller at close. ~5 s (each real plot is a 3000x5400 px PNG)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nnunetv2.training.logging.nnunet_logger import LocalLogger

from pgps.nnunet.progress import PNG_NAME, BackgroundProgressPlot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _log_epoch(logger: LocalLogger, epoch: int) -> None:
    for key in ("mean_fg_dice", "ema_fg_dice", "train_losses", "val_losses", "lrs"):
        logger.log(key, 0.5 / (epoch + 1), epoch)
    logger.log("dice_per_class_or_region", [0.5], epoch)
    logger.log("epoch_start_timestamps", float(epoch), epoch)
    logger.log("epoch_end_timestamps", epoch + 0.9, epoch)


def test_newest_state_lands_whole_and_requests_coalesce(tmp_path: Path) -> None:
    logger, plot = LocalLogger(), BackgroundProgressPlot()
    for epoch in range(6):  # faster than one plot takes: requests queue up and replace each other
        _log_epoch(logger, epoch)
        plot.submit(logger, str(tmp_path))
    plot.close()
    assert plot.last_drawn_epochs == 6
    assert 1 <= plot.drawn < 6
    assert (tmp_path / PNG_NAME).read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == [PNG_NAME]  # no temp dirs left behind
    # the snapshot is a copy: logging on while a plot draws does not change what it draws
    _log_epoch(logger, 6)
    plot.submit(logger, str(tmp_path))
    logger.my_fantastic_logging["train_losses"].append(1.0)
    plot.close()
    assert plot.last_drawn_epochs == 7


def test_drawing_error_surfaces_at_close(tmp_path: Path) -> None:
    logger, plot = LocalLogger(), BackgroundProgressPlot()
    _log_epoch(logger, 0)
    plot.submit(logger, str(tmp_path / "missing-folder"))
    with pytest.raises(RuntimeError, match=f"drawing {PNG_NAME} failed"):
        plot.close()
    plot.close()  # reported once; the plotter stays usable
