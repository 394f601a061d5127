"""The time budget's plan: what the warm-up measured, the cost model built on it, and how many
epochs each stage gets so that training fits the budget. Pure arithmetic (no torch, no trainer).

Per-epoch cost of stage k = iterations x (train step + synchronous loading) + validation at the
full patch + checkpoint writing (``checkpoint_latest`` every ``save_every`` epochs, and
``checkpoint_best`` whenever the EMA Dice improves: counted every epoch) + the throttled progress
plot. The curriculum's order is kept; the full-size stage keeps at least ``min_full_share`` of the
epochs (the network must see the planned patch long enough for sliding-window inference); a
budget too short for every stage drops early stages. Among the plans that fit, the one with the
most epochs: more optimisation steps for the same wall clock.

The plan travels as a dict (``to_dict``/``from_dict``) in ``pgps_config.json``, the checkpoint
(``pgps.time_plan``) and the run record (``time_budget``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pgps.errors import PGPSError
from pgps.nnunet.progress import MAX_SHARE
from pgps.schedule import ScheduleError


@dataclass(frozen=True)
class WarmupCosts:
    """Seconds measured by the warm-up, per stage of the mode's FULL curriculum where a list."""

    patch_sizes: list[list[int]]
    batch_sizes: list[int]
    train_step_seconds_raw: list[float]
    train_step_seconds: list[float]  # affine fit over voxels per batch (see affine_fit)
    train_load_seconds: list[float]
    val_step_seconds: float
    val_load_seconds: float
    first_step_extra_seconds: list[float]  # paid again at a stage's first real step
    checkpoint_seconds: float
    plot_seconds: float
    loader_build_seconds: float  # paid again at every stage change

    def stage_change_seconds(self, index: int) -> float:
        """A new loader and the first step at a new shape."""
        return self.loader_build_seconds + self.first_step_extra_seconds[index]


@dataclass(frozen=True)
class EpochPlan:
    """Epochs per kept stage, in curriculum order (the last kept stage is the full size)."""

    stage_epochs: list[int]
    stage_indices: list[int]  # which stages of the full curriculum are kept
    predicted_seconds: float
    budget_seconds: float

    @property
    def num_epochs(self) -> int:
        return sum(self.stage_epochs)


@dataclass(frozen=True)
class Replan:
    """One closed-loop decision after epoch ``after_epoch``: the new epochs per kept stage (epochs
    already trained unchanged) and what it was based on."""

    after_epoch: int
    spent_seconds: float
    stage_indices: list[int]
    stage_epochs: list[int]
    per_epoch_correction_seconds: float | None = None  # at a stage change: the cost the warm-up missed
    full_epoch_seconds: float | None = None  # in the full-size stage: the measured epoch length

    @property
    def num_epochs(self) -> int:
        return sum(self.stage_epochs)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "after_epoch": self.after_epoch,
            "spent_seconds": self.spent_seconds,
            "stage_indices": list(self.stage_indices),
            "stage_epochs": list(self.stage_epochs),
            "num_epochs": self.num_epochs,
        }
        if self.per_epoch_correction_seconds is not None:
            d["per_epoch_correction_seconds"] = self.per_epoch_correction_seconds
        if self.full_epoch_seconds is not None:
            d["full_epoch_seconds"] = self.full_epoch_seconds
        return d


@dataclass(frozen=True)
class TimePlan:
    """The budget's current plan: the open-loop plan from the warm-up, then every re-plan applied."""

    time_budget: str  # the knob, normalised ("600s", "0.5x")
    budget_seconds: float
    min_full_share: float
    measured: WarmupCosts
    epoch_seconds: list[float]  # predicted seconds of one epoch at each stage of the full curriculum
    stage_indices: list[int]
    stage_epochs: list[int]
    predicted_seconds: float  # open loop
    predicted_stage_seconds: list[float]  # open loop
    warmup_seconds: float
    replans: list[Replan] = field(default_factory=list)

    @property
    def num_epochs(self) -> int:
        return sum(self.stage_epochs)

    def stage_position(self, epoch: int) -> int:
        """Which kept stage trains ``epoch`` (past the end: the last)."""
        end = 0
        for j, n in enumerate(self.stage_epochs):
            end += n
            if epoch < end:
                return j
        return len(self.stage_epochs) - 1

    def stage_start(self, position: int) -> int:
        return sum(self.stage_epochs[:position])

    def with_replan(self, change: Replan) -> TimePlan:
        return replace(
            self,
            stage_indices=list(change.stage_indices),
            stage_epochs=list(change.stage_epochs),
            replans=[*self.replans, change],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "time_budget": self.time_budget,
            "budget_seconds": self.budget_seconds,
            "min_full_share": self.min_full_share,
            "measured": asdict(self.measured),
            "epoch_seconds": list(self.epoch_seconds),
            "stage_indices": list(self.stage_indices),
            "stage_epochs": list(self.stage_epochs),
            "num_epochs": self.num_epochs,
            "predicted_seconds": self.predicted_seconds,
            "predicted_stage_seconds": list(self.predicted_stage_seconds),
            "warmup_seconds": self.warmup_seconds,
            "replans": [r.to_dict() for r in self.replans],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> TimePlan:
        """A plan written by ``to_dict`` (checkpoint); a missing key is one PGPSError naming ``where``."""
        try:
            measured = WarmupCosts(**{f.name: data["measured"][f.name] for f in fields(WarmupCosts)})
            replans = [
                Replan(
                    after_epoch=r["after_epoch"],
                    spent_seconds=r["spent_seconds"],
                    stage_indices=r["stage_indices"],
                    stage_epochs=r["stage_epochs"],
                    per_epoch_correction_seconds=r.get("per_epoch_correction_seconds"),
                    full_epoch_seconds=r.get("full_epoch_seconds"),
                )
                for r in data.get("replans", [])
            ]
            return cls(
                **{f.name: data[f.name] for f in fields(cls) if f.name not in ("measured", "replans")},
                measured=measured,
                replans=replans,
            )
        except (KeyError, TypeError) as exc:
            raise PGPSError(f"{where}: time-budget plan lacks {exc}; resume with the version that wrote it") from None


# ---------------------------------------------------------------- cost model
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


def checkpoint_seconds_per_epoch(costs: WarmupCosts, save_every: int) -> float:
    """``checkpoint_latest`` every ``save_every`` epochs, ``checkpoint_best`` counted every epoch.
    Also the tail of an epoch still to come when the closed loop decides (before nnU-Net's
    ``on_epoch_end`` writes them)."""
    return costs.checkpoint_seconds * (1 / save_every + 1)


def plot_seconds_per_epoch(draw_seconds: float, rest_of_epoch: float) -> float:
    """progress.png's cost per epoch under the throttle (pgps.nnunet.progress): a draw every epoch
    when epochs are long, else at most MAX_SHARE of the wall time."""
    return min(draw_seconds, MAX_SHARE / (1 - MAX_SHARE) * rest_of_epoch)


def epoch_seconds(costs: WarmupCosts, iters_per_epoch: int, val_iters: int, save_every: int) -> list[float]:
    """Predicted seconds of one epoch at each stage of the full curriculum."""
    val = val_iters * (costs.val_step_seconds + costs.val_load_seconds)
    ckpt = checkpoint_seconds_per_epoch(costs, save_every)
    steps = zip(costs.train_step_seconds, costs.train_load_seconds)
    rest = [iters_per_epoch * (s + ld) + val + ckpt for s, ld in steps]
    return [r + plot_seconds_per_epoch(costs.plot_seconds, r) for r in rest]


def budget_seconds(time_budget: str, num_epochs: int, per_epoch: list[float]) -> float:
    """Absolute budget (``"600s"``), or a fraction (``"0.5x"``) of the predicted constant-patch run
    with the same epochs and iterations."""
    value = float(time_budget[:-1])
    if time_budget.endswith("x"):
        return value * num_epochs * per_epoch[-1]
    return value


# ---------------------------------------------------------------- epochs per stage
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
) -> EpochPlan:
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
        return EpochPlan([1] * len(costs), indices, fixed_seconds + sum(costs), budget_seconds)
    split = split_with_full_share(len(costs), lo, min_full_share, prior_epochs)
    return EpochPlan(split, indices, fixed_seconds + predicted(lo), budget_seconds)


def first_plan(
    costs: WarmupCosts,
    *,
    time_budget: str,
    num_epochs: int,
    iters_per_epoch: int,
    val_iters: int,
    save_every: int,
    min_full_share: float,
    warmup_seconds: float,
) -> TimePlan:
    """The open-loop plan from the warm-up's costs. A budget that cannot hold one epoch at the full
    patch still trains that one epoch (over budget, ``predicted_seconds > budget_seconds``; the
    trainer logs it): every budget that parses works, none fails after the warm-up."""
    per_epoch = epoch_seconds(costs, iters_per_epoch, val_iters, save_every)
    budget = budget_seconds(time_budget, num_epochs, per_epoch)
    # per stage change: a new loader and the first step at a new shape (all stages: an upper bound when thinned)
    fixed = len(per_epoch) * costs.loader_build_seconds + sum(costs.first_step_extra_seconds)
    if fixed + per_epoch[-1] > budget:
        last = len(per_epoch) - 1
        plan = EpochPlan([1], [last], costs.stage_change_seconds(last) + per_epoch[last], budget)
    else:
        plan = plan_epochs(per_epoch, budget, min_full_share, fixed_seconds=fixed)
    return TimePlan(
        time_budget=time_budget,
        budget_seconds=budget,
        min_full_share=min_full_share,
        measured=costs,
        epoch_seconds=per_epoch,
        stage_indices=plan.stage_indices,
        stage_epochs=plan.stage_epochs,
        predicted_seconds=plan.predicted_seconds,
        predicted_stage_seconds=[e * per_epoch[i] for e, i in zip(plan.stage_epochs, plan.stage_indices)],
        warmup_seconds=warmup_seconds,
    )
