"""Training progress from the run record ``pgps_record.json`` the trainers rewrite every epoch:
current curriculum stage and epoch, and the time left at the measured pace."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

RECORD_NAME = "pgps_record.json"


@dataclass(frozen=True)
class Progress:
    record: str
    epochs_done: int
    num_epochs: int | None
    stage: int | None
    num_stages: int | None
    patch_size: list[int] | None
    seconds_per_epoch: float | None
    resumes: int

    def seconds_left(self) -> float | None:
        if self.num_epochs is None or self.seconds_per_epoch is None:
            return None
        return max(self.num_epochs - self.epochs_done, 0) * self.seconds_per_epoch


def find_records(outs: list[str]) -> list[Path]:
    """Run records inside a stage's outputs (an output folder, or the record itself). While a run trains,
    `pgps train` keeps it in ``.<out>.<key>.partial`` next to the output and renames it when finished."""
    found: list[Path] = []
    for out in outs:
        path = Path(out)
        if path.name == RECORD_NAME and path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob(RECORD_NAME)))
        elif path.parent.is_dir():
            for partial in sorted(path.parent.glob(f".{path.name}.*.partial")):
                found.extend(sorted(partial.rglob(RECORD_NAME)))
    return found


def read_progress(record: Path) -> Progress | None:
    """None while the record is missing or unreadable (the trainer has not written it yet)."""
    try:
        data = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    epochs = data.get("epochs") or []
    schedule = data.get("schedule") or {}
    durations = []
    for e in epochs:
        wall = e.get("wall_time")
        if wall is None and e.get("epoch_end") is not None and e.get("epoch_start") is not None:
            wall = e["epoch_end"] - e["epoch_start"]
        if isinstance(wall, (int, float)) and wall >= 0:
            durations.append(float(wall))
    recent = durations[-5:]  # the current stage's pace: patch size (and so cost) changes per stage
    last = epochs[-1] if epochs else {}
    stages = schedule.get("stages")
    return Progress(
        record=str(record),
        epochs_done=len(epochs),
        num_epochs=schedule.get("num_epochs"),
        stage=last.get("stage"),
        num_stages=len(stages) if isinstance(stages, list) else None,
        patch_size=last.get("patch_size"),
        seconds_per_epoch=sum(recent) / len(recent) if recent else None,
        resumes=len(data.get("resumes") or []),
    )


def age_s(record: Path) -> float | None:
    try:
        return time.time() - record.stat().st_mtime
    except OSError:
        return None
