"""The run record ``<fold>/pgps_record.json``: the schedule and, per epoch, what the network
actually saw and where its time went, plus the run's ``clock`` (``pgps.nnunet.clock``).
An epoch's entry is written BEFORE nnU-Net's checkpoint, so after any crash the record holds at
least every epoch the checkpoint has, and rewritten once that epoch's bookkeeping is done (its
``epoch_end``). A resume drops the epochs past the checkpoint (their time becomes ``lost_s``),
which keeps the epoch list free of gaps and duplicates."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgps import fileio
from pgps.errors import PGPSError
from pgps.nnunet.clock import lost_seconds, record_clock
from pgps.nnunet.shapes import ShapeTally

if TYPE_CHECKING:
    from pgps.nnunet.base import PGPSTrainerBase

RECORD_NAME = "pgps_record.json"
CONFIG_NAME = "pgps_config.json"


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


def _num(x: Any) -> Any:
    """JSON-safe number or list of numbers (NaN -> None)."""
    if x is None:
        return None
    if isinstance(x, list | tuple):
        return [_num(v) for v in x]
    if getattr(x, "ndim", 0):  # a numpy array
        return [_num(v) for v in x.tolist()]
    v = float(x)
    return None if math.isnan(v) else v


def epoch_entry(trainer: PGPSTrainerBase, tally: ShapeTally, end: float) -> dict:
    """The record's entry for the epoch being closed (``end``: the time so far; the trainer sets
    the final ``epoch_end``, ``wall_time`` and ``timing_s`` once nnU-Net's bookkeeping is done)."""
    e = trainer.current_epoch
    stage = trainer.pgps_schedule.stage_at(e)
    get = trainer.logger.get_value
    start = float(get("epoch_start_timestamps", step=-1))
    return {
        "epoch": e,
        "stage": trainer.pgps_schedule.stage_index(e),
        "patch_size": list(stage.patch_size),
        "batch_size": stage.batch_size,
        "train_input_shapes": ShapeTally.as_list(tally.train),
        "val_input_shapes": ShapeTally.as_list(tally.val),
        "epoch_start": start,
        "epoch_end": end,
        "wall_time": end - start,
        "lr": _num(get("lrs", step=-1)),
        "train_loss": _num(get("train_losses", step=-1)),
        "val_loss": _num(get("val_losses", step=-1)),
        "pseudo_dice": _num(get("dice_per_class_or_region", step=-1)),
        "mean_pseudo_dice": _num(get("mean_fg_dice", step=-1)),
        "ema_pseudo_dice": _num(get("ema_fg_dice", step=-1)),
    }


def run_config(trainer: PGPSTrainerBase, codecarbon_mode: str | None) -> dict:
    """``pgps_config.json``: every setting the run used (knobs, plan geometry, versions, dry runs,
    compile settings, the time-budget plan, codecarbon)."""
    import nnunetv2
    import torch

    plan = trainer.pgps_time_plan
    carbon = trainer.pgps_knobs.codecarbon
    return {
        "trainer": trainer.__class__.__name__,
        "mode": trainer.pgps_mode,
        "knobs": trainer.pgps_knobs.to_dict(),
        "planned_patch_size": list(trainer.pgps_planned_patch),
        "planned_batch_size": trainer.pgps_planned_batch,
        "poolings": list(trainer.pgps_poolings),
        "start_bottleneck": list(trainer.pgps_start_bottleneck) if trainer.pgps_start_bottleneck else None,
        "oversample_foreground_percent": trainer.pgps_global_oversample,
        "multicrop": trainer.pgps_multicrop,
        "one_voxel_safe_instance_norm": trainer.pgps_safe_instance_norm,
        "configuration": trainer.configuration_name,
        "plans": trainer.plans_manager.plans_name,
        "device": str(trainer.device),
        "cpu_threads": trainer.pgps_cpu_threads,  # torch's intra-op threads on the CPU (None: nnU-Net's choice)
        "world_size": trainer.pgps_world[0],
        "versions": {"torch": torch.__version__, "nnunetv2": getattr(nnunetv2, "__version__", "2.8.x")},
        "dry_runs": trainer.pgps_dry_runs,
        "torch_compile": getattr(trainer, "pgps_compile_settings", None),
        "augmentation": trainer.pgps_knobs.augmentation,
        "cuda_graphs": trainer.pgps_cuda_graphs,
        "time_budget": plan.to_dict() if plan is not None else None,
        "codecarbon": {
            "country": None if carbon == "off" else carbon,
            "tracking_mode": None if carbon == "off" else codecarbon_mode,
        },
    }
