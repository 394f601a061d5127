"""codecarbon for a whole training, one task per curriculum stage through the public task
API (``start_task``/``stop_task``); the baseline is tracked the same way, so CO2 figures compare
like for like. ``emissions.csv`` lands in the fold directory."""

from __future__ import annotations

import logging
from pathlib import Path


class StageEnergy:
    def __init__(self, country: str, fold_dir: str | Path, project: str) -> None:
        self.country = country
        self.fold_dir = Path(fold_dir)
        self.project = project
        self.tracker = None
        self.task: str | None = None

    def start(self) -> None:
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
        if self.tracker is None:
            return
        if self.task is not None:
            self.tracker.stop_task()
            self.task = None
        self.tracker.stop()
        self.tracker = None
