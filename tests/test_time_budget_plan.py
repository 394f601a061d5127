"""The time budget's plan (pgps.nnunet.time_budget.plan): epochs per stage from measured seconds
per epoch, the cost model on the warm-up's numbers, and the plan's round trip through JSON."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgps.errors import PGPSError
from pgps.nnunet.time_budget.plan import (
    Replan,
    TimePlan,
    WarmupCosts,
    affine_fit,
    budget_seconds,
    epoch_seconds,
    first_plan,
    plan_epochs,
    plot_seconds_per_epoch,
    split_with_full_share,
)
from pgps.schedule import ScheduleError

COSTS = WarmupCosts(
    patch_sizes=[[16, 8, 8], [16, 16, 8], [32, 32, 32]],
    batch_sizes=[2, 2, 2],
    train_step_seconds_raw=[0.1, 0.2, 1.0],
    train_step_seconds=[0.1, 0.2, 1.0],
    train_load_seconds=[0.01, 0.02, 0.1],
    val_step_seconds=0.4,
    val_load_seconds=0.1,
    first_step_extra_seconds=[0.5, 0.5, 0.5],
    checkpoint_seconds=0.25,
    plot_seconds=0.6,
    loader_build_seconds=0.2,
)


def test_split_keeps_full_share_and_order() -> None:
    # the last stage gets ceil(0.25 * 100) = 25, the other 75 spread over 8 stages: 3 x 10 then 5 x 9
    assert split_with_full_share(9, 100, 0.25) == [10, 10, 10, 9, 9, 9, 9, 9, 25]
    # without a share the last stage takes the remainder of an even split: 100 // 9 = 11, 100 - 88 = 12
    assert split_with_full_share(9, 100, 0.0) == [11, 11, 11, 11, 11, 11, 11, 11, 12]
    with pytest.raises(ScheduleError, match="8 epochs cannot hold 9 stages"):
        split_with_full_share(9, 8, 0.25)


def test_plan_fits_budget_and_uses_it() -> None:
    costs = [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 13.0]
    plan = plan_epochs(costs, budget_seconds=3600, min_full_share=0.25, fixed_seconds=60)
    assert plan.predicted_seconds <= 3600
    assert plan.predicted_seconds > 3600 - 13.0 * 2  # nothing big left on the table
    assert plan.stage_epochs[-1] >= 0.25 * plan.num_epochs
    assert plan.stage_indices == list(range(9))


def test_tight_budget_thins_stages_keeps_full_size() -> None:
    costs = [1.0, 2.0, 3.0, 4.0, 10.0]
    plan = plan_epochs(costs, budget_seconds=15.5)
    assert plan.stage_indices[-1] == 4
    assert plan.predicted_seconds <= 15.5
    assert len(plan.stage_indices) < 5


def test_budget_below_one_full_epoch_is_an_error() -> None:
    with pytest.raises(ScheduleError, match="cannot hold one epoch at the full patch"):
        plan_epochs([1.0, 5.0], budget_seconds=4.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.5, 50.0), min_size=1, max_size=14).map(sorted),
    st.floats(60.0, 5_000.0),
    st.floats(0.0, 0.6),
)
def test_plan_properties(costs, budget, share) -> None:
    if costs[-1] > budget:
        with pytest.raises(ScheduleError):
            plan_epochs(costs, budget, share)
        return
    plan = plan_epochs(costs, budget, share)
    assert plan.predicted_seconds <= budget + 1e-6
    assert all(e >= 1 for e in plan.stage_epochs)
    assert plan.stage_indices == sorted(plan.stage_indices) and plan.stage_indices[-1] == len(costs) - 1
    kept = [costs[i] for i in plan.stage_indices]
    assert abs(sum(e * c for e, c in zip(plan.stage_epochs, kept)) - plan.predicted_seconds) < 1e-6


def test_prior_epochs_count_towards_the_full_share() -> None:  # a re-plan of the rest of a run
    # 12 epochs already trained: the rest must put >= 25 % of all 20 epochs at full size
    split = split_with_full_share(3, 8, 0.25, prior_epochs=12)
    assert sum(split) == 8 and split[-1] == 5
    plan = plan_epochs([1.0, 2.0, 4.0], budget_seconds=100.0, min_full_share=0.25, prior_epochs=40)
    assert plan.stage_epochs[-1] >= 0.25 * (40 + plan.num_epochs)
    assert plan.predicted_seconds <= 100.0 and plan.num_epochs == 35


def test_every_stage_keeps_one_epoch_before_the_full_share() -> None:
    """Where the epochs cannot hold both, every stage keeps its one epoch and the full size gets the rest: the
    share is capped, not met by dropping a stage (the case a CI re-plan hit: 2 epochs trained, 9 left for 8
    stages, a share of ceil(0.25 * 11) = 3)."""
    assert split_with_full_share(8, 9, 0.25, prior_epochs=2) == [1] * 7 + [2]
    assert split_with_full_share(8, 10, 0.25, prior_epochs=2) == [1] * 7 + [3]  # one more epoch: the share holds
    plan = plan_epochs([1.0] * 7 + [2.0], budget_seconds=11.5, min_full_share=0.25, prior_epochs=2)
    assert plan.stage_epochs == [1] * 7 + [2] and plan.stage_indices == list(range(8))


def test_epoch_seconds_cost_model() -> None:
    # 10 iterations x (step + load) + 2 val x (0.4 + 0.1) + checkpoint 0.25 x (1/1 + 1) + the throttled plot
    per_epoch = epoch_seconds(COSTS, iters_per_epoch=10, val_iters=2, save_every=1)
    rest = [10 * 0.11 + 1.0 + 0.5, 10 * 0.22 + 1.0 + 0.5, 10 * 1.1 + 1.0 + 0.5]
    assert per_epoch == pytest.approx([r + min(0.6, 0.02 / 0.98 * r) for r in rest])
    assert epoch_seconds(COSTS, 10, 2, save_every=5)[0] == pytest.approx(
        10 * 0.11 + 1.0 + 0.25 * 1.2 + min(0.6, 0.02 / 0.98 * (10 * 0.11 + 1.0 + 0.3))
    )


def test_budget_in_seconds_or_as_a_fraction_of_the_constant_run() -> None:
    assert budget_seconds("600s", 1000, [1.0, 2.0, 4.0]) == 600.0
    assert budget_seconds("0.5x", 100, [1.0, 2.0, 4.0]) == 0.5 * 100 * 4.0  # 100 epochs at the full patch


def test_plot_cost_per_epoch_follows_the_throttle() -> None:
    assert plot_seconds_per_epoch(0.6, 100.0) == pytest.approx(0.6)  # long epochs: a draw every epoch
    assert plot_seconds_per_epoch(0.6, 1.0) == pytest.approx(0.02 / 0.98)  # short ones: 2 % of the wall time


def test_affine_fit_smooths_one_outlier_and_falls_back() -> None:
    voxels = [100, 200, 300, 400, 500]
    fitted = affine_fit(voxels, [1.1, 1.2, 5.0, 1.4, 1.5])  # stage 2 measured while the cores were busy
    # least squares by hand: mean 2.04, slope (188 + 84 - 64 - 108) / 100000 = 0.001
    assert fitted == pytest.approx([2.04 + 0.001 * (v - 300) for v in voxels])
    assert affine_fit(voxels, [1.1, 1.2, 1.3, 1.4, 1.5]) == pytest.approx([1.1, 1.2, 1.3, 1.4, 1.5])
    assert affine_fit([100, 200], [1.0, 3.0]) == [1.0, 3.0]  # too few points: raw numbers
    assert affine_fit(voxels, [5.0, 4.0, 3.0, 2.0, 1.0]) == [5.0, 4.0, 3.0, 2.0, 1.0]  # falling: raw numbers


def _plan(time_budget: str) -> TimePlan:
    """The first plan for COSTS at 1000 epochs x 10 iterations, 2 validation iterations, 3 s of warm-up."""
    return first_plan(
        COSTS,
        time_budget=time_budget,
        num_epochs=1000,
        iters_per_epoch=10,
        val_iters=2,
        save_every=1,
        min_full_share=0.25,
        warmup_seconds=3.0,
    )


def test_first_plan_and_its_round_trip_through_json() -> None:
    plan = _plan("100s")
    assert plan.budget_seconds == 100.0 and plan.predicted_seconds <= 100.0
    assert plan.stage_indices == [0, 1, 2] and plan.stage_epochs[-1] >= 0.25 * plan.num_epochs
    # fixed: 3 loader builds + 3 first-step extras
    per_epoch = plan.epoch_seconds
    expected = 3 * 0.2 + 3 * 0.5 + sum(e * per_epoch[i] for e, i in zip(plan.stage_epochs, plan.stage_indices))
    assert plan.predicted_seconds == pytest.approx(expected)
    later = plan.with_replan(Replan(5, 40.0, [0, 2], [3, 20], per_epoch_correction_seconds=0.1))
    later = later.with_replan(Replan(9, 60.0, [0, 2], [3, 18], full_epoch_seconds=2.5))
    data = json.loads(json.dumps(later.to_dict()))
    assert data["num_epochs"] == 21 and [r["after_epoch"] for r in data["replans"]] == [5, 9]
    assert "full_epoch_seconds" not in data["replans"][0] and "per_epoch_correction_seconds" not in data["replans"][1]
    assert TimePlan.from_dict(data, "ckpt") == later
    del data["measured"]["plot_seconds"]
    with pytest.raises(PGPSError, match="^ckpt: time-budget plan lacks 'plot_seconds'"):
        TimePlan.from_dict(data, "ckpt")


def test_a_budget_below_one_full_epoch_trains_that_epoch_over_budget() -> None:
    """Every budget that parses works (issue 15): none fails after the warm-up; one epoch at the full
    patch (10 iterations of 1.0 s alone exceed 5 s), predicted over the budget for the trainer's log."""
    plan = _plan("5s")
    assert (plan.stage_indices, plan.stage_epochs, plan.budget_seconds) == ([2], [1], 5.0)
    assert plan.epoch_seconds[2] > 10.0
    assert plan.predicted_seconds == pytest.approx(0.2 + 0.5 + plan.epoch_seconds[2])
    assert plan.predicted_seconds > plan.budget_seconds
