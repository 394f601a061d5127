"""The time budget's closed loop (pgps.nnunet.time_budget.controller), pure, on timelines built by
hand: nothing decided mid-stage, a re-plan at every stage change with the cost the warm-up missed,
the full-size countdown, resumes whose dead gap is not spent, over-budget runs, thinned curricula,
and whole simulated runs that must end on budget. Every expected number is worked out in a comment."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pgps.nnunet.clock import EpochTime
from pgps.nnunet.time_budget.controller import (
    actual_stage_seconds,
    additive_correction,
    decide,
    final_stage_epochs_left,
)
from pgps.nnunet.time_budget.plan import Replan, TimePlan, WarmupCosts
from pgps.schedule import ScheduleError


def costs(n: int, change: float = 0.0) -> WarmupCosts:
    """Warm-up costs whose only use in the controller is the stage-change cost (``change`` each)."""
    return WarmupCosts(
        patch_sizes=[[8, 8, 8]] * n,
        batch_sizes=[2] * n,
        train_step_seconds_raw=[0.1] * n,
        train_step_seconds=[0.1] * n,
        train_load_seconds=[0.0] * n,
        val_step_seconds=0.1,
        val_load_seconds=0.0,
        first_step_extra_seconds=[0.0] * n,
        checkpoint_seconds=0.0,
        plot_seconds=0.0,
        loader_build_seconds=change,
    )


def plan(epoch_seconds: list[float], indices: list[int], epochs: list[int], budget: float, share: float = 0.25):
    return TimePlan(
        time_budget=f"{budget:g}s",
        budget_seconds=budget,
        min_full_share=share,
        measured=costs(len(epoch_seconds)),
        epoch_seconds=epoch_seconds,
        stage_indices=indices,
        stage_epochs=epochs,
        predicted_seconds=0.0,
        predicted_stage_seconds=[0.0] * len(indices),
        warmup_seconds=0.0,
    )


def line(spans: list[float], start: float = 0.0, first_epoch: int = 0) -> list[EpochTime]:
    """Back-to-back epochs of the given lengths (the last one's end: the time so far)."""
    out, t = [], start
    for k, span in enumerate(spans):
        out.append(EpochTime(first_epoch + k, t, t + span))
        t += span
    return out


BASE = plan([1.0, 2.0, 4.0], [0, 1, 2], [4, 4, 6], budget=60.0)


def test_nothing_is_decided_mid_stage() -> None:
    for n in (1, 2, 3):  # epochs 0..2 of the 4-epoch first stage
        assert decide(BASE, line([1.5] * n), (), 0.1) is None


def test_stage_change_replans_the_rest_with_the_missed_cost() -> None:
    # epochs 0-3 took 1.5 s (the last 1.4 s so far + 0.1 s of checkpoint to come): spent 6.0 s, predicted
    # 4 x 1.0 = 4.0, so 0.5 s per epoch was missed: the rest costs 2.5 and 4.5 s per epoch, 54 s remain.
    # Largest E with split(2, E, 0.25, prior 4) affordable: E = 15 -> [7, 8] = 17.5 + 36 = 53.5 s
    # (E = 16 -> [8, 8] = 56 s); the full size keeps ceil(0.25 * 19) = 5 <= 8 epochs.
    change = decide(BASE, line([1.5, 1.5, 1.5, 1.4]), (), 0.1)
    assert change == Replan(
        3, pytest.approx(6.0), [0, 1, 2], [4, 7, 8], per_epoch_correction_seconds=pytest.approx(0.5)
    )


def test_stage_change_cost_counts_as_predicted_work() -> None:
    # the same timeline, but each stage change was predicted to cost 1.0 s: stage 0's change is part of the
    # 6.0 s spent, so only (6.0 - 4.0 - 1.0) / 4 = 0.25 s per epoch was missed; the two changes ahead cost 2.0 s,
    # leaving 52 s for epochs of 2.25 and 4.25 s: E = 16 -> [8, 8] = 18 + 34 = 52.0 fits exactly,
    # E = 17 -> [8, 9] = 18 + 38.25 does not
    priced = replace(BASE, measured=costs(3, change=1.0))
    change = decide(priced, line([1.5, 1.5, 1.5, 1.4]), (), 0.1)
    assert change is not None and change.per_epoch_correction_seconds == pytest.approx(0.25)
    assert change.stage_epochs == [4, 8, 8]


def test_a_resume_gap_is_not_spent() -> None:
    # killed after epoch 2, resumed at epoch 3 after 100 s: the same decision as without the gap
    timeline = line([1.5, 1.5, 1.5]) + line([1.4], start=104.5, first_epoch=3)
    resumed, straight = decide(BASE, timeline, {3}, 0.1), decide(BASE, line([1.5, 1.5, 1.5, 1.4]), (), 0.1)
    assert resumed.spent_seconds == pytest.approx(straight.spent_seconds) == 6.0
    assert (resumed.stage_indices, resumed.stage_epochs) == (straight.stage_indices, straight.stage_epochs)
    # without the resume mark the gap would be training time: then the run is over budget
    assert decide(BASE, timeline, (), 0.1).stage_epochs == [4, 1]


def test_over_budget_at_a_stage_change_keeps_one_full_size_epoch() -> None:
    # 70 s spent of 60: the middle stage is dropped, the full size still gets its one epoch
    change = decide(BASE, line([17.5, 17.5, 17.5, 17.4]), (), 0.1)
    assert (change.stage_indices, change.stage_epochs) == ([0, 2], [4, 1])


def test_full_size_countdown_uses_the_median_epoch() -> None:
    after = replace(BASE, stage_epochs=[4, 7, 8])  # the full size starts at epoch 11
    # epochs 0-3 1.5 s, 4-10 2.5 s (23.5 s), full-size epochs 11 and 12 took 4.0 and 4.4 s, epoch 13 3.4 s so
    # far + 0.2 s to come: spent 35.5 s, 24.5 s remain at median(4.0, 4.4) = 4.2 s: round(5.83) = 6 more epochs,
    # so the full size ends after 13 + 1 - 11 + 6 = 9 epochs
    timeline = line([1.5] * 4 + [2.5] * 7 + [4.0, 4.4, 3.4])
    change = decide(after, timeline, (), 0.2)
    assert change == Replan(13, pytest.approx(35.5), [0, 1, 2], [4, 7, 9], full_epoch_seconds=pytest.approx(4.2))
    # the same count again: no decision
    assert decide(replace(after, stage_epochs=[4, 7, 9]), timeline, (), 0.2) is None
    # the first full-size epoch has no completed one to measure: its own span + the tail (3.9 + 0.1 s), 28.5 s
    # spent: 31.5 / 4.0 = 7.9 -> 8 more epochs after epoch 11
    first = decide(after, line([1.5] * 4 + [2.5] * 7 + [3.9]), (), 0.1)
    assert first.full_epoch_seconds == pytest.approx(4.0) and first.stage_epochs == [4, 7, 9]


def test_full_size_over_budget_ends_the_run_now() -> None:
    after = replace(BASE, stage_epochs=[4, 7, 8])
    change = decide(after, line([1.5] * 4 + [2.5] * 7 + [40.0]), (), 0.0)  # 63.5 s spent
    assert change.stage_epochs == [4, 7, 1] and change.num_epochs == 12  # epoch 11 was the last


def test_thinned_curriculum_drops_a_stage_that_no_longer_fits() -> None:
    # 9 measured stages, kept 0, 4, 8; stage 0's two epochs took what was predicted (2 x 1.0 s): no correction.
    # 7 s remain for stages 4 (3 s) and 8 (5 s): both need 8 s, so stage 4 goes; one full-size epoch (5 s) fits
    thin = plan([1.0] * 4 + [3.0] * 4 + [5.0], [0, 4, 8], [2, 2, 2], budget=9.0)
    change = decide(thin, line([1.0, 1.0]), (), 0.0)
    assert (change.stage_indices, change.stage_epochs, change.per_epoch_correction_seconds) == ([0, 8], [2, 1], 0.0)


def test_actual_stage_seconds_follow_the_clock() -> None:
    timeline = line([1.5, 1.5, 1.5, 1.5]) + line([2.0, 2.0], start=106.0, first_epoch=4)
    assert actual_stage_seconds(BASE, timeline, {4}) == [6.0, 4.0, 0.0]


def simulate(true_seconds: list[float], start_plan: TimePlan, kill_after: int | None = None) -> tuple[float, TimePlan]:
    """Train epochs of the given true length per kept stage (tail 0.3 s inside each), deciding after every
    epoch like the trainer; optionally killed after an epoch and resumed 50 s later. Returns the training
    seconds and the final plan."""
    current, trained, resumed, t, epoch = start_plan, [], set(), 0.0, 0
    while epoch < current.num_epochs:
        span = true_seconds[current.stage_position(epoch)]
        trained.append(EpochTime(epoch, t, t + span - 0.3))  # the decision comes before the checkpoint
        change = decide(current, trained, resumed, 0.3)
        trained[-1] = EpochTime(epoch, t, t + span)
        if change is not None:
            current = current.with_replan(change)
        t += span
        epoch += 1
        if epoch == kill_after:
            t += 50.0
            resumed.add(epoch)
    return sum(actual_stage_seconds(current, trained, resumed)), current


@pytest.mark.parametrize("kill_after", [None, 7])
@pytest.mark.parametrize("miss", [-0.4, 0.0, 0.6])
def test_simulated_runs_end_on_budget(miss: float, kill_after: int | None) -> None:
    # warm-up predicted 1, 2, 4 s per epoch; the real epochs are off by `miss` s each (bookkeeping it missed)
    start = plan([1.0, 2.0, 4.0], [0, 1, 2], [10, 10, 7], budget=100.0)
    trained, final = simulate([1.0 + miss, 2.0 + miss, 4.0 + miss], start, kill_after)
    full = 4.0 + miss
    assert abs(trained - 100.0) <= full / 2 + 1e-9, (trained, final.stage_epochs)
    changes = [r for r in final.replans if r.per_epoch_correction_seconds is not None]
    assert [r.after_epoch for r in changes] == [9, 9 + final.stage_epochs[1]]  # one decision per stage change
    assert changes[0].per_epoch_correction_seconds == pytest.approx(miss)


def test_additive_correction_spreads_the_miss_over_the_epochs() -> None:
    assert additive_correction(12.0, 10.0, 8) == pytest.approx(0.25)
    assert additive_correction(9.0, 10.0, 4) == pytest.approx(-0.25)
    assert additive_correction(5.0, 1.0, 0) == 0.0


@pytest.mark.parametrize(
    ("remaining", "per_epoch", "left"), [(10.0, 2.0, 5), (10.9, 2.0, 5), (11.0, 2.0, 6), (0.9, 2.0, 0), (-3.0, 2.0, 0)]
)
def test_final_stage_epochs_left_rounds_to_nearest(remaining: float, per_epoch: float, left: int) -> None:
    assert final_stage_epochs_left(remaining, per_epoch) == left


def test_final_stage_epochs_left_rejects_zero_cost() -> None:
    with pytest.raises(ScheduleError, match="positive"):
        final_stage_epochs_left(10.0, 0.0)
