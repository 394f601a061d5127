"""nnU-Net's progress.png at a bounded cost (pgps.nnunet.progress), with nnU-Net's own LocalLogger
and matplotlib: requests inside the throttle window are skipped, the newest state lands at flush,
the PNG is whole and no temp dir is left. ~3 s (each real plot is a 3000x5400 px PNG)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nnunetv2.training.logging.nnunet_logger import LocalLogger

from pgps.nnunet.progress import PNG_NAME, ThrottledProgressPlot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _log_epoch(logger: LocalLogger, epoch: int) -> None:
    for key in ("mean_fg_dice", "ema_fg_dice", "train_losses", "val_losses", "lrs"):
        logger.log(key, 0.5 / (epoch + 1), epoch)
    logger.log("dice_per_class_or_region", [0.5], epoch)
    logger.log("epoch_start_timestamps", float(epoch), epoch)
    logger.log("epoch_end_timestamps", epoch + 0.9, epoch)


def test_throttle_skips_inside_the_window_and_flush_draws_the_newest(tmp_path: Path) -> None:
    logger, plot = LocalLogger(), ThrottledProgressPlot(max_share=0.02)
    drawn_now = []
    for epoch in range(6):  # epochs far shorter than 50x a draw: only the first draws at once
        _log_epoch(logger, epoch)
        drawn_now.append(plot.request(logger, str(tmp_path)))
    assert drawn_now == [True, False, False, False, False, False]
    assert (plot.drawn, plot.skipped, plot.last_drawn_epochs) == (1, 5, 1)
    plot.flush()
    assert (plot.drawn, plot.last_drawn_epochs) == (2, 6)
    plot.flush()  # nothing new since: no extra draw
    assert plot.drawn == 2
    assert (tmp_path / PNG_NAME).read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == [PNG_NAME]  # no temp dirs left behind


def test_share_one_draws_every_request(tmp_path: Path) -> None:
    logger, plot = LocalLogger(), ThrottledProgressPlot(max_share=1.0)
    for epoch in range(2):
        _log_epoch(logger, epoch)
        assert plot.request(logger, str(tmp_path))
    assert (plot.drawn, plot.skipped) == (2, 0)


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_invalid_share_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="max_share must be in"):
        ThrottledProgressPlot(max_share=share)
