"""The time budget's closed loop, pure: the plan and the epochs trained so far (on the one
training clock) in, a decision about the epochs not yet trained out. No torch, no trainer.

The open-loop plan from the warm-up misses what the warm-up does not see (nnU-Net's per-epoch
bookkeeping, cache effects of real data, other processes). So, after the epoch the trainer is
closing (the last of ``trained``; its ``end`` is "now", before nnU-Net's checkpoint, whose
expected cost is ``tail_seconds``):

- at the last epoch of a stage before the full size: re-plan every later stage with the remaining
  budget and the per-epoch cost the warm-up missed so far (actual minus predicted, spread over
  the epochs trained); the full-size share is planned over all epochs, trained ones included;
- in the full-size stage, after every epoch: as many more epochs as the remaining budget holds at
  the measured full-size epoch length (median of the completed ones), rounded to the nearest whole
  epoch; only a change is a decision.

Already over budget at a stage change: the later stages are dropped but the full size still gets
its one epoch (the network must have seen the planned patch)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Sequence

from pgps.nnunet.clock import EpochTime, epoch_spans
from pgps.nnunet.time_budget.plan import EpochPlan, Replan, TimePlan, plan_epochs
from pgps.schedule import ScheduleError


def additive_correction(actual_seconds: float, predicted_seconds: float, epochs: int) -> float:
    """Per-epoch cost the warm-up missed, spread evenly over the epochs trained so far. Additive,
    not a factor: what the warm-up misses is mostly per-epoch bookkeeping that does not grow with
    the patch."""
    return (actual_seconds - predicted_seconds) / epochs if epochs > 0 else 0.0


def final_stage_epochs_left(remaining_seconds: float, seconds_per_epoch: float) -> int:
    """Epochs still to train at the full patch so the run ends as close to its budget as whole
    epochs allow (rounded to nearest: over by at most half an epoch, or under)."""
    if seconds_per_epoch <= 0:
        raise ScheduleError(f"seconds per epoch must be positive, got {seconds_per_epoch}")
    return max(0, math.floor(remaining_seconds / seconds_per_epoch + 0.5))


def actual_stage_seconds(plan: TimePlan, trained: Sequence[EpochTime], resumed_at: Collection[int]) -> list[float]:
    """Training seconds per kept stage (plan-vs-actual), from the same spans as the clock."""
    out = [0.0] * len(plan.stage_epochs)
    for e, span in zip(trained, epoch_spans(trained, resumed_at)):
        out[plan.stage_position(e.epoch)] += span
    return out


def decide(
    plan: TimePlan, trained: Sequence[EpochTime], resumed_at: Collection[int], tail_seconds: float
) -> Replan | None:
    """The decision after the last epoch of ``trained`` (every epoch trained so far, in order),
    or None when nothing is to be decided or nothing changes."""
    if not trained:
        raise ValueError("decide() needs the epoch being closed")
    epoch = trained[-1].epoch
    position, last = plan.stage_position(epoch), len(plan.stage_epochs) - 1
    if position < last and epoch != plan.stage_start(position + 1) - 1:
        return None  # mid-stage before the full size: nothing to decide yet
    spans = epoch_spans(trained, resumed_at)
    spent = sum(spans) + tail_seconds
    remaining = plan.budget_seconds - spent
    if position < last:
        return _replan_later_stages(plan, trained, position, spent, remaining)
    start = plan.stage_start(last)
    done = [s for e, s in zip(trained[:-1], spans[:-1]) if e.epoch >= start]
    seconds = statistics.median(done) if done else spans[-1] + tail_seconds
    stage_epochs = [*plan.stage_epochs[:-1], epoch + 1 - start + final_stage_epochs_left(remaining, seconds)]
    if stage_epochs == plan.stage_epochs:
        return None
    return Replan(epoch, spent, list(plan.stage_indices), stage_epochs, full_epoch_seconds=seconds)


def _replan_later_stages(
    plan: TimePlan, trained: Sequence[EpochTime], position: int, spent: float, remaining: float
) -> Replan:
    costs, per_epoch, indices = plan.measured, plan.epoch_seconds, plan.stage_indices
    predicted = sum(per_epoch[indices[plan.stage_position(e.epoch)]] for e in trained)
    predicted += sum(costs.stage_change_seconds(indices[j]) for j in range(position + 1))
    delta = additive_correction(spent, predicted, len(trained))
    rest = indices[position + 1 :]
    rest_costs = [max(per_epoch[i] + delta, 0.1 * per_epoch[i]) for i in rest]
    fixed = sum(costs.stage_change_seconds(i) for i in rest)
    try:
        sub = plan_epochs(
            rest_costs, remaining, plan.min_full_share, fixed_seconds=fixed, prior_epochs=trained[-1].epoch + 1
        )
    except ScheduleError:  # over budget already: the full size still gets its one epoch
        sub = EpochPlan([1], [len(rest) - 1], fixed + rest_costs[-1], remaining)
    return Replan(
        after_epoch=trained[-1].epoch,
        spent_seconds=spent,
        stage_indices=indices[: position + 1] + [rest[j] for j in sub.stage_indices],
        stage_epochs=plan.stage_epochs[: position + 1] + sub.stage_epochs,
        per_epoch_correction_seconds=delta,
    )
