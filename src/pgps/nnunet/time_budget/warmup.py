"""The time budget's warm-up, inside the trainer: a short timed run of real training steps at every
stage size of the mode's full curriculum (synthetic batches), validation at the full patch,
checkpoint writing, one progress-plot draw and one loader build. Every trainer state is restored
afterwards (weights, optimizer, grad scaler, RNG).

Loading is timed only when it runs in the main process (``nnUNet_n_proc_DA=0``; with background
workers it overlaps the step), once at the planned patch (building a loader per stage costs more
than it tells) and scaled by voxels per batch. Every rank runs the steps (DDP steps synchronise);
``trainer_glue`` broadcasts rank 0's result."""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pgps import fileio
from pgps.nnunet.dryrun import restored_state, synthetic_batch
from pgps.nnunet.loaders import build_train_loader, finish_loader
from pgps.nnunet.time_budget.plan import WarmupCosts, affine_fit
from pgps.schedule import Stage

if TYPE_CHECKING:
    from pgps.nnunet.base import PGPSTrainerBase

WARMUP_CALLS = 3  # per stage; the first (allocator / cudnn autotune) is discarded, the median of the rest kept
PROBE_NAME = "time_budget_probe"  # temp folder of the checkpoint probe: .time_budget_probe.<random>.partial


def _timed_calls(fn: Callable[[], object], calls: int = WARMUP_CALLS) -> list[float]:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _median_seconds(fn: Callable[[], object], calls: int = WARMUP_CALLS) -> float:
    times = _timed_calls(fn, calls)
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


def _loading_is_synchronous() -> bool:
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    return get_allowed_n_proc_DA() == 0


def measure(trainer: PGPSTrainerBase, stages: Sequence[Stage]) -> WarmupCosts:
    """Seconds per train step and per loaded batch at each of ``stages`` (the full curriculum),
    validation, checkpoint, plot and loader-build cost."""

    def sync() -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)

    sync_load = _loading_is_synchronous()
    step_s, first_extra = [], []
    with restored_state(trainer):
        trainer.network.train()
        for st in stages:
            batch = synthetic_batch(trainer, st.patch_size, trainer.pgps_rank_batch(st.batch_size))

            def step(b: dict = batch) -> None:
                trainer.train_step(b)
                sync()

            times = _timed_calls(step)
            step_s.append(statistics.median(times[1:]))
            first_extra.append(max(0.0, times[0] - step_s[-1]))  # paid again at the stage's first real step
        trainer.network.eval()
        val_batch = synthetic_batch(
            trainer, trainer.pgps_planned_patch, trainer.pgps_rank_batch(trainer.pgps_planned_batch)
        )

        def val() -> None:
            trainer.validation_step(val_batch)
            sync()

        val_step = _median_seconds(val)
    val_load = _median_seconds(lambda: next(trainer.dataloader_val)) if sync_load else 0.0
    cases = trainer.pgps_rank_batch(trainer.pgps_planned_batch) if trainer.pgps_multicrop else None
    t0 = time.perf_counter()
    loader = build_train_loader(
        trainer,
        trainer.pgps_planned_patch,
        trainer.pgps_rank_batch(trainer.pgps_planned_batch),
        trainer.pgps_global_oversample,
        cases_per_batch=cases,
        augmentation=trainer.pgps_knobs.augmentation,
    )
    build = time.perf_counter() - t0
    try:
        full_load = _median_seconds(lambda: next(loader)) if sync_load else 0.0
    finally:
        finish_loader(loader)
    full_voxels = math.prod(trainer.pgps_planned_patch) * trainer.pgps_planned_batch
    voxels = [math.prod(st.patch_size) * st.batch_size for st in stages]
    return WarmupCosts(
        patch_sizes=[list(st.patch_size) for st in stages],
        batch_sizes=[st.batch_size for st in stages],
        train_step_seconds_raw=step_s,
        train_step_seconds=affine_fit(voxels, step_s),
        train_load_seconds=[full_load * v / full_voxels for v in voxels],
        val_step_seconds=val_step,
        val_load_seconds=val_load,
        first_step_extra_seconds=first_extra,
        checkpoint_seconds=_checkpoint_seconds(trainer),
        plot_seconds=_plot_seconds(trainer),
        loader_build_seconds=build,
    )


def _checkpoint_seconds(trainer: PGPSTrainerBase) -> float:
    """One real ``save_checkpoint`` into a temp folder named the ``pgps.fileio`` way (a kill leaves a
    ``.partial`` that the trainer's start-up cleanup removes)."""
    if trainer.disable_checkpointing or trainer.local_rank != 0:
        return 0.0
    probe = Path(tempfile.mkdtemp(prefix=f".{PROBE_NAME}.", suffix=fileio.PARTIAL, dir=trainer.output_folder))
    try:
        t0 = time.perf_counter()
        trainer.save_checkpoint(str(probe / "checkpoint.pth"))
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _plot_seconds(trainer: PGPSTrainerBase) -> float:
    """One draw of nnU-Net's progress.png (matplotlib; ~0.6 s on a CPU core); throttled in training."""
    if trainer.local_rank != 0:
        return 0.0
    from nnunetv2.training.logging.nnunet_logger import LocalLogger

    logger = LocalLogger()
    for epoch in range(2):
        for key in ("mean_fg_dice", "ema_fg_dice", "train_losses", "val_losses", "lrs"):
            logger.log(key, 0.5, epoch)
        logger.log("dice_per_class_or_region", [0.5], epoch)
        logger.log("epoch_start_timestamps", float(epoch), epoch)
        logger.log("epoch_end_timestamps", epoch + 1.0, epoch)
    probe = Path(tempfile.mkdtemp(prefix=f".{PROBE_NAME}.", suffix=fileio.PARTIAL, dir=trainer.output_folder))
    try:
        t0 = time.perf_counter()
        logger.plot_progress_png(str(probe))
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(probe, ignore_errors=True)
