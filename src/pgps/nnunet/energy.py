"""codecarbon over exactly the training clock's spans (``pgps.nnunet.clock``): the tracker starts
right before a session's first epoch starts and stops right after its last epoch ends, one task
per curriculum stage through the public task API (``start_task``/``stop_task``). The baseline is
tracked the same way, so CO2 figures compare like for like. ``emissions.csv`` (one row per
session) lands in the fold directory.

Tracking mode (codecarbon 3.3.2, read in its source): ``process`` changes only what is
ESTIMATED. Without readable RAPL the CPU power is estimated from load: ``machine`` takes the
machine's load (every other process included, at least 10 % of the TDP), ``process`` the CPU
time of this process and its children (the data-augmentation workers) -- the run. RAM: the
machine's total memory vs this process tree's resident memory. MEASURED counters are whole
devices in both modes: RAPL reads the CPU package, NVML the GPUs the run sees
(``CUDA_VISIBLE_DEVICES``). So a single-process run uses ``process``; under DDP the other ranks
are not children of rank 0 (which tracks), so ``machine`` is used there."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from pgps.errors import PGPSError
from pgps.nnunet.knobs import CODECARBON_MISSING


def tracking_mode(world_size: int) -> str:
    """``process`` where it measures this run (one process and its workers), else ``machine``."""
    return "process" if world_size == 1 else "machine"


class StageEnergy:
    def __init__(self, country: str, fold_dir: str | Path, project: str, mode: str) -> None:
        if mode not in ("process", "machine"):
            raise ValueError(f"codecarbon tracking mode must be process or machine, got {mode!r}")
        if importlib.util.find_spec("codecarbon") is None:  # the core install (no pipeline extra)
            raise PGPSError(f"PGPS_CODECARBON={country}: {CODECARBON_MISSING}")
        self.country = country
        self.fold_dir = Path(fold_dir)
        self.project = project
        self.mode = mode
        self.tracker: Any = None  # codecarbon's OfflineEmissionsTracker while a session runs
        self.task: str | None = None

    @property
    def running(self) -> bool:
        return self.tracker is not None

    def start_session(self) -> None:
        """Start tracking (right before the session's first epoch starts); no-op when running.
        Hardware detection (~2 s) happens here, before the epoch's start time is taken."""
        if self.tracker is not None:
            return
        from codecarbon import OfflineEmissionsTracker
        from codecarbon.output_methods.base_output import OutputMethod

        self.fold_dir.mkdir(parents=True, exist_ok=True)
        self.tracker = OfflineEmissionsTracker(
            country_iso_code=self.country,
            output_dir=str(self.fold_dir),
            output_file="emissions.csv",
            project_name=self.project,
            log_level=logging.ERROR,
            output_methods=[OutputMethod.CSV],  # codecarbon 3.3: save_to_file=True is deprecated
            tracking_mode=self.mode,
        )
        self.tracker.start()

    def enter_stage(self, name: str) -> None:
        if self.tracker is None:
            return
        if self.task is not None:
            self.tracker.stop_task()
        self.tracker.start_task(name)
        self.task = name

    def stop(self) -> None:
        """Stop tracking (right after the session's last epoch ended) and write emissions.csv."""
        if self.tracker is None:
            return
        if self.task is not None:
            self.tracker.stop_task()
            self.task = None
        self.tracker.stop()
        self.tracker = None
