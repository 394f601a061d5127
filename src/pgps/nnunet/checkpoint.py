"""Checkpoints of the PGPS trainers: nnU-Net's checkpoint plus a ``pgps`` entry (schedule, knobs,
time-budget plan), written atomically; and the check that a checkpoint may be resumed with the
current settings. nnU-Net 2.8 writes in place (a kill mid-write leaves a torn
``checkpoint_latest.pth``) and resumes whatever curriculum settings it is given."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from pgps import fileio
from pgps.errors import PGPSError
from pgps.nnunet.dryrun import unwrap
from pgps.nnunet.time_budget.plan import TimePlan

if TYPE_CHECKING:
    from pgps.nnunet.base import PGPSTrainerBase


def save(trainer: PGPSTrainerBase, filename: str) -> None:
    """ADAPTED COPY of ``nnUNetTrainer.save_checkpoint`` (nnU-Net 2.8.1; pinned by
    tests/test_nnunet_copies.py): the same dict, plus ``pgps``, written with ``pgps.fileio``."""
    if trainer.local_rank != 0:
        return
    if trainer.disable_checkpointing:
        trainer.print_to_log_file("No checkpoint written, checkpointing is disabled")
        return
    plan = trainer.pgps_time_plan
    checkpoint = {
        "network_weights": unwrap(trainer.network).state_dict(),
        "optimizer_state": trainer.optimizer.state_dict(),
        "grad_scaler_state": trainer.grad_scaler.state_dict() if trainer.grad_scaler is not None else None,
        "logging": trainer.logger.get_checkpoint(),
        "_best_ema": trainer._best_ema,
        "current_epoch": trainer.current_epoch + 1,
        "init_args": trainer.my_init_kwargs,
        "trainer_name": trainer.__class__.__name__,
        "inference_allowed_mirroring_axes": trainer.inference_allowed_mirroring_axes,
        "pgps": {
            "schedule": trainer.pgps_schedule.to_dict(),
            "knobs": trainer.pgps_knobs.to_dict(),
            "time_plan": plan.to_dict() if plan is not None else None,
        },
    }
    fileio.write_with(filename, lambda tmp: torch.save(checkpoint, tmp))


def saved_time_plan(checkpoint: dict[str, Any], where: str, time_budget: str) -> TimePlan | None:
    """The checkpoint's time-budget plan, after checking the knob agrees: a budgeted run resumes
    only with a budget (and the plan it started with, never re-measured), an unbudgeted one only
    without."""
    saved = checkpoint.get("pgps")
    if saved is None:
        raise PGPSError(f"{where}: not written by a PGPS trainer (no 'pgps' entry); cannot check its curriculum")
    plan = saved.get("time_plan")
    if plan is not None and time_budget == "off":
        raise PGPSError(
            f"{where}: the checkpoint was trained with PGPS_TIME_BUDGET={plan['time_budget']}; set it again to resume"
        )
    if plan is None and time_budget != "off":
        raise PGPSError(f"{where}: the checkpoint holds no time-budget plan; unset PGPS_TIME_BUDGET to resume it")
    return None if plan is None else TimePlan.from_dict(plan, where)


def check_schedule(checkpoint: dict[str, Any], where: str, mine: dict[str, Any]) -> None:
    """Refuse a checkpoint trained with a different curriculum (one line naming what differs)."""
    saved = checkpoint["pgps"]["schedule"]
    if saved == mine:
        return
    diff = sorted(k for k in set(mine) | set(saved) if mine.get(k) != saved.get(k))
    named = [k for k in diff if k not in ("stages", "voxel_fraction")]
    detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {mine.get(k)!r}" for k in named)
    raise PGPSError(
        f"{where}: the checkpoint was trained with a different PGPS schedule ({detail or 'stages differ'}); "
        "resume with the PGPS_* values in pgps_config.json or start a new run"
    )
