"""The run record ``<fold>/pgps_record.json``: the schedule and, per epoch, what the network
actually saw. Rewritten atomically every epoch BEFORE the checkpoint, so after any crash the
record holds at least every epoch the checkpoint has; a resume drops the epochs past the
checkpoint, which keeps the epoch list free of gaps and duplicates."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pgps import fileio
from pgps.errors import PGPSError

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

    def start(self, current_epoch: int) -> None:
        """Fresh run (epoch 0) or resume: keep the recorded epochs the checkpoint covers."""
        if current_epoch == 0 or not self.path.is_file():
            self.save()
            return
        try:
            old = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PGPSError(f"{self.path}: unreadable run record ({exc}); cannot resume the record") from None
        if _trained_part(old.get("schedule"), current_epoch) != _trained_part(self.data["schedule"], current_epoch):
            raise PGPSError(f"{self.path}: recorded schedule differs from the current one; refusing to resume")
        kept = [e for e in old.get("epochs", []) if e["epoch"] < current_epoch]
        self.data["epochs"] = kept
        self.data["resumes"] = old.get("resumes", []) + [
            {"at_epoch": current_epoch, "time": time.time(), "dropped_epochs": len(old.get("epochs", [])) - len(kept)}
        ]
        self.save()

    def add_epoch(self, entry: dict) -> None:
        self.data["epochs"].append(entry)
        self.save()

    def save(self) -> None:
        fileio.write_json(self.path, self.data)


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
