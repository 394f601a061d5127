"""Time-budgeted curriculum arithmetic (the trainer feeds it measured seconds per epoch)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgps.budget import (
    additive_correction,
    final_stage_epochs_left,
    plan_epochs,
    split_with_full_share,
)
from pgps.schedule import ScheduleError


def test_split_keeps_full_share_and_order() -> None:
    split = split_with_full_share(9, 100, 0.25)
    assert sum(split) == 100 and split[-1] >= 25 and min(split) >= 1
    assert max(split[:-1]) - min(split[:-1]) <= 1


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


# ---------------------------------------------------------------- closed loop
def test_prior_epochs_count_towards_the_full_share() -> None:
    # 12 epochs already trained: the rest must put >= 25 % of all 20 epochs at full size
    split = split_with_full_share(3, 8, 0.25, prior_epochs=12)
    assert sum(split) == 8 and split[-1] == 5
    plan = plan_epochs([1.0, 2.0, 4.0], budget_seconds=100.0, min_full_share=0.25, prior_epochs=40)
    assert plan.stage_epochs[-1] >= 0.25 * (40 + plan.num_epochs)
    assert plan.predicted_seconds <= 100.0 and plan.num_epochs == 35


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
