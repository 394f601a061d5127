"""Time-budgeted curriculum: how many epochs each stage gets so the run ends within a budget.

Pure arithmetic on measured costs (seconds per epoch at each stage size, from a short timed
warm-up), so it is testable without torch. The curriculum's order is kept; the full-size stage
keeps at least ``min_full_share`` of the epochs (the network must still see the planned patch
long enough for sliding-window inference). Among the plans that fit, we take the one with the
most epochs: more optimisation steps for the same wall clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pgps.schedule import ScheduleError


@dataclass(frozen=True)
class BudgetPlan:
    stage_epochs: list[int]
    stage_indices: list[int]  # which of the measured stages are kept (short budgets thin the curriculum)
    predicted_seconds: float
    budget_seconds: float

    @property
    def num_epochs(self) -> int:
        return sum(self.stage_epochs)


def split_with_full_share(num_stages: int, epochs: int, min_full_share: float, prior_epochs: int = 0) -> list[int]:
    """Equal epochs for the early stages, the last stage gets the remainder and at least
    ``ceil(min_full_share * (prior_epochs + epochs))`` (``prior_epochs``: already trained, when the
    rest of a run is re-planned); every stage at least one epoch."""
    if epochs < num_stages:
        raise ScheduleError(f"{epochs} epochs cannot hold {num_stages} stages")
    share = math.ceil(min_full_share * (prior_epochs + epochs))
    last = max(share, epochs - (epochs // num_stages) * (num_stages - 1), 1)
    last = min(last, epochs - (num_stages - 1))
    early = epochs - last
    per, extra = divmod(early, num_stages - 1) if num_stages > 1 else (0, 0)
    return [per + (1 if k < extra else 0) for k in range(num_stages - 1)] + [last]


def plan_epochs(
    seconds_per_epoch: list[float],
    budget_seconds: float,
    min_full_share: float = 0.25,
    fixed_seconds: float = 0.0,
    max_epochs: int = 100_000,
    prior_epochs: int = 0,
) -> BudgetPlan:
    """Largest total epoch count whose predicted time (``fixed_seconds`` + sum of
    ``epochs_k * seconds_per_epoch[k]``) fits ``budget_seconds``. ``seconds_per_epoch`` is in
    curriculum order, the last entry the full planned patch. ``prior_epochs`` were trained before
    (re-planning the rest of a run): they count towards the full-size share."""
    if not seconds_per_epoch or any(t <= 0 for t in seconds_per_epoch):
        raise ScheduleError(f"seconds per epoch must be positive, got {seconds_per_epoch}")
    if not 0 <= min_full_share <= 1:
        raise ScheduleError(f"min_full_share must be in [0, 1], got {min_full_share}")
    available = budget_seconds - fixed_seconds
    n = len(seconds_per_epoch)

    # Too tight for one epoch per stage: drop early stages (keep order, keep the full size).
    indices = list(range(n))
    while len(indices) > 1 and sum(seconds_per_epoch[i] for i in indices) > available:
        indices.pop(0 if len(indices) == 2 else len(indices) // 2 - 1)
    costs = [seconds_per_epoch[i] for i in indices]
    if costs[-1] > available:
        raise ScheduleError(
            f"time budget {budget_seconds:.1f} s cannot hold one epoch at the full patch "
            f"({fixed_seconds + costs[-1]:.1f} s predicted)"
        )

    def predicted(epochs: int) -> float:
        split = split_with_full_share(len(costs), epochs, min_full_share, prior_epochs)
        return sum(e * c for e, c in zip(split, costs))

    # predicted() is not monotone in the epoch count (a new epoch can move work from the full
    # stage to a cheaper one), so scan down from the largest count any plan could afford.
    upper = min(max_epochs, int(available // min(costs)))
    lo = next((e for e in range(upper, len(costs) - 1, -1) if predicted(e) <= available), None)
    if lo is None:
        # the share constraint pushes too much onto the full size: one epoch per stage
        return BudgetPlan([1] * len(costs), indices, fixed_seconds + sum(costs), budget_seconds)
    split = split_with_full_share(len(costs), lo, min_full_share, prior_epochs)
    return BudgetPlan(split, indices, fixed_seconds + predicted(lo), budget_seconds)


# ---------------------------------------------------------------- closed loop (re-planning while training)
def additive_correction(actual_seconds: float, predicted_seconds: float, epochs: int) -> float:
    """Per-epoch cost the warm-up missed (progress plotting, logging, the record, cache effects of
    real data): spread evenly over the epochs trained so far. Additive, not a factor: what the
    warm-up misses is mostly per-epoch bookkeeping that does not grow with the patch."""
    return (actual_seconds - predicted_seconds) / epochs if epochs > 0 else 0.0


def final_stage_epochs_left(remaining_seconds: float, seconds_per_epoch: float) -> int:
    """Epochs still to train at the full patch so the run ends as close to its budget as whole
    epochs allow (rounded to nearest: over by at most half an epoch, or under)."""
    if seconds_per_epoch <= 0:
        raise ScheduleError(f"seconds per epoch must be positive, got {seconds_per_epoch}")
    return max(0, math.floor(remaining_seconds / seconds_per_epoch + 0.5))
