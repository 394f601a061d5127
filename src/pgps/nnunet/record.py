"""The run record ``<fold>/pgps_record.json``: the schedule and, per epoch, what the network
actually saw and where its time went, plus the run's ``clock`` (``pgps.nnunet.clock``).
An epoch's entry is written BEFORE nnU-Net's checkpoint, so after any crash the record holds at
least every epoch the checkpoint has, and rewritten once that epoch's bookkeeping is done (its
``epoch_end``). A resume drops the epochs past the checkpoint (their time becomes ``lost_s``),
which keeps the epoch list free of gaps and duplicates."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pgps import fileio
from pgps.errors import PGPSError
from pgps.nnunet.clock import lost_seconds, record_clock

RECORD_NAME = "pgps_record.json"


def _trained_part(schedule: Any, upto: int) -> Any:
    """What epochs ``< upto`` trained with. A time-budgeted run re-plans the epochs it has not
    trained yet, so a record written just before a kill may hold a later plan for those."""
    if not isinstance(schedule, dict) or not isinstance(schedule.get("stages"), list):
        return schedule
    head = {k: v for k, v in schedule.items() if k not in ("num_epochs", "stages", "voxel_fraction")}
    stages = [
        (s.get("patch_size"), s.get("batch_size"), s.get("start_epoch"), min(s.get("end_epoch", upto), upto))
        for s in schedule["stages"]
        if s.get("start_epoch", 0) < upto
    ]
    return head, stages


class RunRecord:
    def __init__(self, fold_dir: str | Path, trainer: str, config: dict, schedule: dict) -> None:
        self.path = Path(fold_dir) / RECORD_NAME
        self.data: dict[str, Any] = {
            "trainer": trainer,
            "config": config,
            "schedule": schedule,
            "epochs": [],
            "resumes": [],
        }
        self.final_validation_s: float | None = None

    def start(self, current_epoch: int) -> None:
        """Fresh run (epoch 0) or resume: keep the recorded epochs the checkpoint covers; the
        ones past it are the killed session's lost work."""
        if current_epoch == 0 or not self.path.is_file():
            self.save()
            return
        old = fileio.read_json(self.path)
        if not isinstance(old, dict) or not isinstance(old.get("epochs"), list):
            raise PGPSError(f"{self.path}: not a run record (no 'epochs' list); cannot resume the record")
        if _trained_part(old.get("schedule"), current_epoch) != _trained_part(self.data["schedule"], current_epoch):
            raise PGPSError(f"{self.path}: recorded schedule differs from the current one; refusing to resume")
        kept = [e for e in old["epochs"] if e["epoch"] < current_epoch]
        dropped = [e for e in old["epochs"] if e["epoch"] >= current_epoch]
        self.data["epochs"] = kept
        self.data["resumes"] = old.get("resumes", []) + [
            {
                "at_epoch": current_epoch,
                "time": time.time(),
                "dropped_epochs": len(dropped),
                "lost_s": lost_seconds(dropped),
            }
        ]
        self.save()

    def add_epoch(self, entry: dict) -> None:
        """Append this epoch's entry and write (before nnU-Net's checkpoint of the epoch)."""
        self.data["epochs"].append(entry)
        self.save()

    def save(self) -> None:
        """Write the record, its clock recomputed from the epochs and resumes."""
        self.data["clock"] = record_clock(self.data["epochs"], self.data["resumes"], self.final_validation_s)
        fileio.write_json(self.path, self.data)


def record_final_validation(fold_dir: str | Path, seconds: float) -> None:
    """``clock.final_validation_s`` into an existing record (nnU-Net's ``--val``: validation
    without training in this process); a fold without a record is left alone."""
    path = Path(fold_dir) / RECORD_NAME
    if not path.is_file():
        return
    data = fileio.read_json(path)
    data["clock"] = record_clock(data.get("epochs", []), data.get("resumes", []), seconds)
    fileio.write_json(path, data)


class ShapeTally:
    """Forward pre-hook: counts the input shapes the network receives, split by train/eval mode."""

    def __init__(self) -> None:
        self.train: dict[tuple[int, ...], int] = {}
        self.val: dict[tuple[int, ...], int] = {}
        self._handle = None

    def __call__(self, module: Any, args: tuple) -> None:
        if not args or not hasattr(args[0], "shape"):
            return
        bucket = self.train if module.training else self.val
        shape = tuple(int(x) for x in args[0].shape)
        bucket[shape] = bucket.get(shape, 0) + 1

    def attach(self, module: Any) -> None:
        self.detach()
        self._handle = module.register_forward_pre_hook(self)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def reset(self) -> None:
        self.train, self.val = {}, {}

    @staticmethod
    def as_list(bucket: dict[tuple[int, ...], int]) -> list[dict]:
        return [{"shape": list(s), "count": n} for s, n in bucket.items()]
