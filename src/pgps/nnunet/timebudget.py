"""Time-budgeted curriculum in the trainer: a short timed warm-up at every stage size of the
mode's full curriculum, then ``pgps.budget.plan_epochs`` picks the epochs per stage so the
training (first epoch start to last epoch end) fits ``PGPS_TIME_BUDGET``. The warm-up is measured
once, on a fresh run. The plan is then corrected in a closed loop (``replan``): at every stage
change the rest of the curriculum is re-planned with the per-epoch cost the warm-up missed, and in
the full-size stage the epoch count follows the measured epoch time. Only epochs not yet trained
change; the current plan travels in the checkpoint so ``--c`` rebuilds the identical schedule.

Per-epoch cost of stage k = iters x (train step + synchronous loading) + validation at the full
patch + checkpoint writing / save_every + the throttled progress plot. Loading is timed only when
it runs in the main process (``nnUNet_n_proc_DA=0``; with background workers it overlaps the GPU
step), once at the planned patch (building a loader per stage costs more than it tells) and
scaled by voxels per batch."""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist

from pgps.budget import BudgetPlan, additive_correction, final_stage_epochs_left, plan_epochs
from pgps.errors import PGPSError
from pgps.nnunet.clock import epoch_spans, epoch_times
from pgps.nnunet.dryrun import restored_state, synthetic_batch
from pgps.nnunet.loaders import build_train_loader, finish_loader
from pgps.nnunet.progress import MAX_SHARE
from pgps.schedule import Schedule, ScheduleError, build_schedule

WARMUP_CALLS = 3  # per stage; the first (allocator / cudnn autotune) is discarded, the median of the rest kept
_ALL_STAGES = 1_000_000  # epochs large enough that build_schedule thins nothing


def _sync(trainer: Any) -> None:
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)


def _timed_calls(fn: Any, calls: int = WARMUP_CALLS) -> list[float]:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _median_seconds(fn: Any, calls: int = WARMUP_CALLS) -> float:
    times = _timed_calls(fn, calls)
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


def full_curriculum(trainer: Any) -> Schedule:
    """Every stage of the trainer's mode (none thinned away), the candidates of the budget plan."""
    return build_schedule(
        trainer.pgps_planned_patch,
        trainer.pgps_poolings,
        _ALL_STAGES,
        trainer.pgps_planned_batch,
        mode=trainer.pgps_mode,
        seed=trainer.pgps_knobs.seed,
        start_bottleneck=trainer.pgps_start_bottleneck,
    )


def _loading_is_synchronous() -> bool:
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    return get_allowed_n_proc_DA() == 0


def measure(trainer: Any) -> dict:
    """Seconds per train step and per loaded batch at each stage, validation and checkpoint cost.
    Every trainer state is restored afterwards (weights, optimizer, scaler, RNG)."""
    if trainer.pgps_schedule.candidates:
        raise PGPSError(f"PGPS_TIME_BUDGET: mode {trainer.pgps_mode!r} draws a patch per iteration; not supported")
    sync_load = _loading_is_synchronous()
    stages = full_curriculum(trainer).stages
    step_s, first_extra = [], []
    with restored_state(trainer):
        trainer.network.train()
        for st in stages:
            batch = synthetic_batch(trainer, st.patch_size, trainer.pgps_rank_batch(st.batch_size))

            def step(b: dict = batch) -> None:
                trainer.train_step(b)
                _sync(trainer)

            times = _timed_calls(step)
            step_s.append(statistics.median(times[1:]))
            first_extra.append(max(0.0, times[0] - step_s[-1]))  # paid again at the stage's first real step
        trainer.network.eval()
        val_bs = trainer.pgps_rank_batch(trainer.pgps_planned_batch)
        val_batch = synthetic_batch(trainer, trainer.pgps_planned_patch, val_bs)

        def val() -> None:
            trainer.validation_step(val_batch)
            _sync(trainer)

        val_step = _median_seconds(val)
    val_load = _median_seconds(lambda: next(trainer.dataloader_val)) if sync_load else 0.0
    full_voxels = math.prod(trainer.pgps_planned_patch) * trainer.pgps_planned_batch
    t0 = time.perf_counter()
    loader = _train_loader(trainer, trainer.pgps_planned_patch, trainer.pgps_planned_batch)
    build = time.perf_counter() - t0  # paid again at every stage change
    try:
        full_load = _median_seconds(lambda: next(loader)) if sync_load else 0.0
    finally:
        finish_loader(loader)
    voxels = [math.prod(st.patch_size) * st.batch_size for st in stages]
    load_s = [full_load * v / full_voxels for v in voxels]
    return {
        "patch_sizes": [list(st.patch_size) for st in stages],
        "batch_sizes": [st.batch_size for st in stages],
        "train_step_seconds_raw": step_s,
        "train_step_seconds": affine_fit(voxels, step_s),
        "train_load_seconds": load_s,
        "val_step_seconds": val_step,
        "val_load_seconds": val_load,
        "first_step_extra_seconds": first_extra,
        "checkpoint_seconds": _checkpoint_seconds(trainer),
        "plot_seconds": _plot_seconds(trainer),
        "loader_build_seconds": build,
    }


def affine_fit(voxels: list[int], seconds: list[float]) -> list[float]:
    """Step time as ``a + b * voxels_per_batch`` (least squares over all stages): one noisy
    measurement (another process took the cores for a moment) no longer decides a stage's epochs.
    Falls back to the raw numbers where the fit is degenerate or not positive."""
    n = len(voxels)
    if n < 3 or len(set(voxels)) < 2:
        return list(seconds)
    mx, my = sum(voxels) / n, sum(seconds) / n
    b = sum((x - mx) * (y - my) for x, y in zip(voxels, seconds)) / sum((x - mx) ** 2 for x in voxels)
    fitted = [my + b * (x - mx) for x in voxels]
    return fitted if b >= 0 and min(fitted) > 0 else list(seconds)


def _train_loader(trainer: Any, patch: tuple[int, ...], global_batch: int) -> Any:
    cases = trainer.pgps_rank_batch(trainer.pgps_planned_batch) if trainer.pgps_multicrop else None
    return build_train_loader(
        trainer, patch, trainer.pgps_rank_batch(global_batch), trainer._pgps_global_oversample, cases_per_batch=cases
    )


def _checkpoint_seconds(trainer: Any) -> float:
    if trainer.disable_checkpointing or trainer.local_rank != 0:
        return 0.0
    fd, tmp = tempfile.mkstemp(prefix=".pgps_budget_probe_", suffix=".pth", dir=trainer.output_folder)
    os.close(fd)
    try:
        t0 = time.perf_counter()
        trainer.save_checkpoint(tmp)
        return time.perf_counter() - t0
    finally:
        os.unlink(tmp)


def _plot_seconds(trainer: Any) -> float:
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
    with tempfile.TemporaryDirectory(dir=trainer.output_folder) as tmp:
        t0 = time.perf_counter()
        logger.plot_progress_png(tmp)
        return time.perf_counter() - t0


def epoch_seconds(costs: dict, knobs: Any) -> list[float]:
    """Predicted seconds of one epoch at each stage of the full curriculum."""
    val = knobs.val_iters * (costs["val_step_seconds"] + costs["val_load_seconds"])
    ckpt = _checkpoint_seconds_per_epoch(costs, knobs)
    steps = zip(costs["train_step_seconds"], costs["train_load_seconds"])
    rest = [knobs.iters_per_epoch * (s + ld) + val + ckpt for s, ld in steps]
    return [r + plot_seconds_per_epoch(costs["plot_seconds"], r) for r in rest]


def _checkpoint_seconds_per_epoch(costs: dict, knobs: Any) -> float:
    """checkpoint_latest every save_every epochs, and checkpoint_best whenever the EMA Dice improves."""
    return costs["checkpoint_seconds"] * (1 / knobs.save_every + 1)


def plot_seconds_per_epoch(draw_seconds: float, rest_of_epoch: float) -> float:
    """progress.png's cost per epoch under the throttle (pgps.nnunet.progress): a draw every epoch
    when epochs are long, else at most MAX_SHARE of the wall time."""
    return min(draw_seconds, MAX_SHARE / (1 - MAX_SHARE) * rest_of_epoch)


def budget_seconds(knobs: Any, per_epoch: list[float]) -> float:
    """Absolute budget, or a fraction of the predicted constant-patch run (same epochs/iters)."""
    value = float(knobs.time_budget[:-1])
    if knobs.time_budget.endswith("x"):
        return value * knobs.num_epochs * per_epoch[-1]
    return value


def make_plan(trainer: Any) -> dict:
    """Warm-up + plan, broadcast from rank 0 under DDP so every rank trains the same schedule."""
    t0 = time.perf_counter()
    costs = measure(trainer)
    per_epoch = epoch_seconds(costs, trainer.pgps_knobs)
    budget = budget_seconds(trainer.pgps_knobs, per_epoch)
    # per stage change: a new loader and the first step at a new shape (all stages: an upper bound when thinned)
    fixed = len(per_epoch) * costs["loader_build_seconds"] + sum(costs["first_step_extra_seconds"])
    try:
        plan = plan_epochs(per_epoch, budget, trainer.pgps_knobs.min_full_share, fixed_seconds=fixed)
    except ScheduleError as exc:
        raise PGPSError(f"PGPS_TIME_BUDGET={trainer.pgps_knobs.time_budget}: {exc}") from None
    result = {
        "time_budget": trainer.pgps_knobs.time_budget,
        "budget_seconds": budget,
        "min_full_share": trainer.pgps_knobs.min_full_share,
        "measured": costs,
        "epoch_seconds": per_epoch,
        "stage_indices": plan.stage_indices,
        "stage_epochs": plan.stage_epochs,
        "num_epochs": plan.num_epochs,
        "predicted_seconds": plan.predicted_seconds,
        "predicted_stage_seconds": [e * per_epoch[i] for e, i in zip(plan.stage_epochs, plan.stage_indices)],
        "warmup_seconds": time.perf_counter() - t0,
    }
    if trainer.is_ddp:
        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    return result


def apply_plan(trainer: Any, plan: dict) -> None:
    """Schedule, epoch count and poly-LR length from a plan (fresh or from a checkpoint)."""
    try:
        trainer.pgps_schedule = build_schedule(
            trainer.pgps_planned_patch,
            trainer.pgps_poolings,
            plan["num_epochs"],
            trainer.pgps_planned_batch,
            mode=trainer.pgps_mode,
            seed=trainer.pgps_knobs.seed,
            start_bottleneck=trainer.pgps_start_bottleneck,
            stage_epochs=plan["stage_epochs"],
            stage_indices=plan["stage_indices"],
        )
    except ScheduleError as exc:
        raise PGPSError(f"time-budget plan does not fit this trainer's curriculum: {exc}") from None
    trainer.num_epochs = plan["num_epochs"]
    scheduler = getattr(trainer, "lr_scheduler", None)
    if scheduler is not None and hasattr(scheduler, "max_steps"):
        scheduler.max_steps = plan["num_epochs"]  # PolyLRScheduler fixed it at initialize()
    trainer.pgps_time_plan = plan


def actual_stage_seconds(epochs: list[dict], num_stages: int, resumed_at: set[int] | None = None) -> list[float]:
    """Recorded training seconds per stage of the budgeted schedule, for plan-vs-actual (spans as
    in ``pgps.budget.epoch_spans``: between-epoch work counted, time dead after a kill not)."""
    out = [0.0] * num_stages
    for e, span in zip(epochs, _record_spans(epochs, resumed_at or set())):
        out[e["stage"]] += span
    return out


def _record_spans(epochs: list[dict], resumed_at: set[int]) -> list[float]:
    return epoch_spans(epoch_times(epochs), resumed_at)


def _replan_on_rank0(trainer: Any, epochs: list[dict], resumed_at: set[int]) -> dict | None:
    plan, sched = trainer.pgps_time_plan, trainer.pgps_schedule
    e = trainer.current_epoch
    k, last = sched.stage_index(e), len(sched.stages) - 1
    if k < last and e != sched.stages[k].end_epoch - 1:
        return None  # mid-stage before the full size: nothing to decide yet
    costs = plan["measured"]
    per_epoch, indices, stage_epochs = plan["epoch_seconds"], plan["stage_indices"], plan["stage_epochs"]
    spans = _record_spans(epochs, resumed_at)
    tail = _checkpoint_seconds_per_epoch(costs, trainer.pgps_knobs)  # the closing epoch still writes these
    spent = sum(spans) + tail
    remaining = plan["budget_seconds"] - spent
    if k < last:  # stage change ahead: re-plan every later stage with the cost the warm-up missed
        predicted = sum(per_epoch[indices[sched.stage_index(x["epoch"])]] for x in epochs)
        predicted += sum(_stage_change_seconds(costs, indices[j]) for j in range(k + 1))
        delta = additive_correction(spent, predicted, len(epochs))
        rest = indices[k + 1 :]
        rest_costs = [max(per_epoch[i] + delta, 0.1 * per_epoch[i]) for i in rest]
        fixed = sum(_stage_change_seconds(costs, i) for i in rest)
        try:
            sub = plan_epochs(rest_costs, remaining, plan["min_full_share"], fixed_seconds=fixed, prior_epochs=e + 1)
        except ScheduleError:  # over budget already: the full size still gets its one epoch
            sub = BudgetPlan([1], [len(rest) - 1], fixed + rest_costs[-1], remaining)
        new_indices = indices[: k + 1] + [rest[j] for j in sub.stage_indices]
        new_epochs = stage_epochs[: k + 1] + sub.stage_epochs
        basis = {"per_epoch_correction_seconds": delta}
    else:  # in the full-size stage: whole epochs of the measured length until the budget is used
        start = sched.stages[k].start_epoch
        full = [s for x, s in zip(epochs[:-1], spans[:-1]) if x["epoch"] >= start]
        seconds = statistics.median(full) if full else spans[-1] + tail
        left = final_stage_epochs_left(remaining, seconds)
        new_indices, new_epochs = list(indices), [*stage_epochs[:-1], e + 1 - start + left]
        basis = {"full_epoch_seconds": seconds}
    if k == last and new_epochs == stage_epochs:
        return None  # full-size stage: only changes are recorded (every stage-change decision is)
    return {
        "after_epoch": e,
        "spent_seconds": spent,
        "stage_indices": new_indices,
        "stage_epochs": new_epochs,
        "num_epochs": sum(new_epochs),
        **basis,
    }


def _stage_change_seconds(costs: dict, index: int) -> float:
    return costs["loader_build_seconds"] + costs["first_step_extra_seconds"][index]


def replan(trainer: Any, epochs: list[dict], resumed_at: set[int]) -> dict | None:
    """Closed-loop correction after epoch ``trainer.current_epoch`` (``epochs``: the run record's
    epochs, this one included): at the last epoch of a stage, re-plan the later stages; in the
    full-size stage, set how many epochs are left. Applies and returns the change (None: none).
    Rank 0 decides (it holds the record) and broadcasts under DDP."""
    change = _replan_on_rank0(trainer, epochs, resumed_at) if trainer.local_rank == 0 else None
    if trainer.is_ddp:
        box = [change]
        dist.broadcast_object_list(box, src=0)
        change = box[0]
    if change is None:
        return None
    plan = dict(trainer.pgps_time_plan)
    plan.update({k: change[k] for k in ("stage_indices", "stage_epochs", "num_epochs")})
    plan["replans"] = [*plan.get("replans", []), change]
    apply_plan(trainer, plan)
    return change
