"""The time budget in a trainer: measure and plan once on a fresh run, apply a plan (fresh or from
a checkpoint) to the trainer's schedule, epoch count and poly-LR length, and follow it in the
closed loop after every epoch. Rank 0 decides (it holds the run record); under DDP its plan and
its decisions are broadcast so every rank trains the same schedule."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, TypeVar

import torch.distributed as dist

from pgps.errors import PGPSError
from pgps.nnunet.clock import EpochTime
from pgps.nnunet.time_budget.controller import decide
from pgps.nnunet.time_budget.plan import Replan, TimePlan, checkpoint_seconds_per_epoch, first_plan
from pgps.nnunet.time_budget.warmup import measure
from pgps.schedule import Schedule, ScheduleError, build_schedule

if TYPE_CHECKING:
    from pgps.nnunet.base import PGPSTrainerBase

_ALL_STAGES = 1_000_000  # epochs large enough that build_schedule thins nothing
T = TypeVar("T")


def _from_rank0(trainer: PGPSTrainerBase, value: T) -> T:
    if not trainer.is_ddp:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def full_curriculum(trainer: PGPSTrainerBase) -> Schedule:
    """Every stage of the trainer's mode (none thinned away): the stages a plan may keep."""
    return build_schedule(
        trainer.pgps_planned_patch,
        trainer.pgps_poolings,
        _ALL_STAGES,
        trainer.pgps_planned_batch,
        mode=trainer.pgps_mode,
        seed=trainer.pgps_knobs.seed,
        start_bottleneck=trainer.pgps_start_bottleneck,
    )


def make_plan(trainer: PGPSTrainerBase) -> TimePlan:
    """Warm-up + open-loop plan (rank 0's, on every rank)."""
    knobs = trainer.pgps_knobs
    if trainer.pgps_schedule.candidates:
        raise PGPSError(f"PGPS_TIME_BUDGET: mode {trainer.pgps_mode!r} draws a patch per iteration; not supported")
    t0 = time.perf_counter()
    costs = measure(trainer, full_curriculum(trainer).stages)
    try:
        plan = first_plan(
            costs,
            time_budget=knobs.time_budget,
            num_epochs=knobs.num_epochs,
            iters_per_epoch=knobs.iters_per_epoch,
            val_iters=knobs.val_iters,
            save_every=knobs.save_every,
            min_full_share=knobs.min_full_share,
            warmup_seconds=time.perf_counter() - t0,
        )
    except ScheduleError as exc:
        raise PGPSError(f"PGPS_TIME_BUDGET={knobs.time_budget}: {exc}") from None
    return _from_rank0(trainer, plan)


def apply_plan(trainer: PGPSTrainerBase, plan: TimePlan) -> None:
    """Schedule, epoch count and poly-LR length from a plan (fresh, re-planned or from a checkpoint)."""
    try:
        trainer.pgps_schedule = build_schedule(
            trainer.pgps_planned_patch,
            trainer.pgps_poolings,
            plan.num_epochs,
            trainer.pgps_planned_batch,
            mode=trainer.pgps_mode,
            seed=trainer.pgps_knobs.seed,
            start_bottleneck=trainer.pgps_start_bottleneck,
            stage_epochs=plan.stage_epochs,
            stage_indices=plan.stage_indices,
        )
    except ScheduleError as exc:
        raise PGPSError(f"time-budget plan does not fit this trainer's curriculum: {exc}") from None
    trainer.num_epochs = plan.num_epochs
    scheduler = getattr(trainer, "lr_scheduler", None)
    if scheduler is not None and hasattr(scheduler, "max_steps"):
        scheduler.max_steps = plan.num_epochs  # PolyLRScheduler fixed it at initialize()
    trainer.pgps_time_plan = plan


def follow(trainer: PGPSTrainerBase, trained: Sequence[EpochTime], resumed_at: Collection[int]) -> Replan | None:
    """The closed loop after the epoch being closed (the last of ``trained``, rank 0's record; empty
    on other ranks): decide on rank 0, broadcast, apply. Returns the decision (None: none)."""
    plan = trainer.pgps_time_plan
    if plan is None:
        raise PGPSError("no time-budget plan to follow")
    change = None
    if trainer.local_rank == 0:
        tail = checkpoint_seconds_per_epoch(plan.measured, trainer.pgps_knobs.save_every)
        change = decide(plan, trained, resumed_at, tail)
    change = _from_rank0(trainer, change)
    if change is not None:
        apply_plan(trainer, plan.with_replan(change))
    return change
