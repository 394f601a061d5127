"""The PGPS curriculum computed from numbers alone (no torch, no nnU-Net).

A schedule is a list of stages, each a patch size, a batch size and a half-open epoch
range ``[start_epoch, end_epoch)``. The stage is a pure function of the epoch, so a run
resumed from any checkpoint lands on the same stage an uninterrupted run would.

Modes
-----
``constant``     the planned patch for every epoch (the nnU-Net baseline).
``pgps``         MICCAI 2024 efficiency schedule, as the official code computes it: start at
                 ``(2*s0, s1, s2)`` (a 2x1x1 bottleneck), grow ONE axis per stage by ``s_d =
                 2**p_d`` in the round-robin order 1 -> 2 -> 0 (2D: 1 -> 0), clamp to the plan,
                 ``epochs // n`` epochs per stage, the last stage takes the remainder.
``pgps+``        MICCAI PGPS+ (official ``nnUNetTrainer_PGPSplus.plan_batch_size``): the same
                 patches, the batch walked back from the last stage with a COMPOUNDING
                 truncation, ``bs_last = b`` (plan batch), ``bs_k = floor(|P_{k+1}| / |P_k| *
                 bs_{k+1})``, then ``max(bs_k, b)``: voxels per batch rise monotonically over
                 training and never exceed the baseline's (128^3, 5/5/5, b = 2: 24 12 6 4 3 2 2
                 2 2, about half the baseline's voxels).
``rpss``         ablation: each iteration draws one of the ``pgps`` patch sizes uniformly at
                 random (seeded by ``(seed, epoch, iteration)``), batch constant.
``efficiency``   journal version: start at a 1x1x1 bottleneck ``(s0, s1, s2)``, greedy growth
                 (the axis whose NEW length is smallest, ties to the lowest axis), plan batch.
``performance``  journal version: the ``efficiency`` patches with ``bs = floor(bs0*|P|/|P_k|)``
                 (per stage, not compounding: voxels per batch ~ the baseline's at every stage).

Short runs (``epochs < n``): instead of the official ZeroDivisionError we keep ``epochs``
stages -- the first, the last (full size) and evenly spaced ones between -- one epoch each.
Such a curriculum may grow several axes at one step; ``pgps schedule`` prints it. A kept stage
trains with the batch it has in the mode's full curriculum (batches are computed before stages
are thinned or selected), so a thinned or time-budgeted run trains exactly the (patch, batch)
pairs the full curriculum would, and a budget's warm-up measures what is trained.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field

MODES = ("constant", "pgps", "pgps+", "rpss", "efficiency", "performance")


class ScheduleError(ValueError):
    """A plan the curriculum cannot be built from (message says which number is wrong)."""


@dataclass(frozen=True)
class Stage:
    patch_size: tuple[int, ...]
    batch_size: int
    start_epoch: int
    end_epoch: int  # exclusive

    @property
    def num_epochs(self) -> int:
        return self.end_epoch - self.start_epoch

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d


@dataclass(frozen=True)
class Schedule:
    mode: str
    planned_patch_size: tuple[int, ...]
    planned_batch_size: int
    poolings: tuple[int, ...]
    num_epochs: int
    stages: tuple[Stage, ...]
    seed: int = 0
    # rpss only: the patch sizes one iteration draws from
    candidates: tuple[tuple[int, ...], ...] = field(default_factory=tuple)

    def stage_index(self, epoch: int) -> int:
        """Index of the stage that trains epoch ``epoch`` (epochs past the end: last stage)."""
        if epoch < 0:
            raise ScheduleError(f"epoch must be >= 0, got {epoch}")
        for i, st in enumerate(self.stages):
            if st.start_epoch <= epoch < st.end_epoch:
                return i
        return len(self.stages) - 1

    def stage_at(self, epoch: int) -> Stage:
        return self.stages[self.stage_index(epoch)]

    def rpss_patch(self, epoch: int, iteration: int) -> tuple[int, ...]:
        """Patch for one RPSS iteration: uniform over the candidates, a pure function of
        (seed, epoch, iteration) so that a resumed run draws exactly what it would have."""
        if not self.candidates:
            return self.stage_at(epoch).patch_size
        key = f"{self.seed}:{epoch}:{iteration}".encode()
        draw = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        return self.candidates[draw % len(self.candidates)]

    @property
    def voxel_fraction(self) -> float:
        """Voxels the run trains on relative to constant-patch training with the same epochs,
        iterations and planned batch: the compute budget, and the lower bound on the
        wall-time ratio. For constant-batch modes it equals the per-sample average of
        ``|patch| / |P|``."""
        full = _volume(self.planned_patch_size) * self.planned_batch_size
        if self.candidates:  # rpss: expectation over the uniform draw
            mean = sum(_volume(c) for c in self.candidates) / len(self.candidates)
            return mean * self.planned_batch_size / full
        total = sum(st.num_epochs * st.batch_size * _volume(st.patch_size) for st in self.stages)
        return total / (self.num_epochs * full)

    def to_dict(self) -> dict:
        d = {
            "mode": self.mode,
            "planned_patch_size": list(self.planned_patch_size),
            "planned_batch_size": self.planned_batch_size,
            "poolings": list(self.poolings),
            "num_epochs": self.num_epochs,
            "seed": self.seed,
            "stages": [s.to_dict() for s in self.stages],
            "voxel_fraction": self.voxel_fraction,
        }
        if self.candidates:
            d["candidates"] = [list(c) for c in self.candidates]
        return d


def _volume(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _validate(patch_size: tuple[int, ...], poolings: tuple[int, ...], epochs: int, batch_size: int) -> None:
    if len(patch_size) not in (2, 3):
        raise ScheduleError(f"patch size must have 2 or 3 axes, got {list(patch_size)}")
    if len(poolings) != len(patch_size):
        raise ScheduleError(f"poolings {list(poolings)} must give one count per patch axis {list(patch_size)}")
    if any(p < 0 for p in poolings):
        raise ScheduleError(f"poolings must be >= 0, got {list(poolings)}")
    for axis, (size, p) in enumerate(zip(patch_size, poolings)):
        if size < 1 or size % (2**p):
            raise ScheduleError(
                f"patch axis {axis} = {size} is not a positive multiple of 2**{p} = {2**p}: "
                "these poolings cannot produce this patch"
            )
    if epochs < 1:
        raise ScheduleError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ScheduleError(f"batch size must be >= 1, got {batch_size}")


def round_robin_patches(patch_size: tuple[int, ...], poolings: tuple[int, ...]) -> list[tuple[int, ...]]:
    """MICCAI PGPS patches: start ``(2*s0, s1, s2)``, one axis per stage, order 1 -> 2 -> 0."""
    steps = [2**p for p in poolings]
    cur = [min(2 * steps[0], patch_size[0])] + steps[1:]
    order = list(range(1, len(patch_size))) + [0]
    patches = [tuple(cur)]
    i = 0
    while tuple(cur) != tuple(patch_size):
        axis = order[i % len(order)]
        i += 1
        if cur[axis] >= patch_size[axis]:
            continue
        cur[axis] = min(cur[axis] + steps[axis], patch_size[axis])
        patches.append(tuple(cur))
    return patches


def greedy_patches(
    patch_size: tuple[int, ...], poolings: tuple[int, ...], start_bottleneck: tuple[int, ...] | None = None
) -> list[tuple[int, ...]]:
    """Journal PGPS patches: start at a ``start_bottleneck`` (default 1x1x1) bottleneck, grow the
    axis whose new length would be smallest (ties to the lowest axis) by ``2**p``."""
    steps = [2**p for p in poolings]
    bottleneck = start_bottleneck or (1,) * len(patch_size)
    if len(bottleneck) != len(patch_size) or any(b < 1 for b in bottleneck):
        raise ScheduleError(f"start bottleneck {list(bottleneck)} must be >= 1 per axis {list(patch_size)}")
    cur = [min(b * s, p) for b, s, p in zip(bottleneck, steps, patch_size)]
    patches = [tuple(cur)]
    while tuple(cur) != tuple(patch_size):
        growable = [a for a in range(len(cur)) if cur[a] < patch_size[a]]
        axis = min(growable, key=lambda a: (min(cur[a] + steps[a], patch_size[a]), a))
        cur[axis] = min(cur[axis] + steps[axis], patch_size[axis])
        patches.append(tuple(cur))
    return patches


def thin_indices(num_stages: int, epochs: int) -> list[int]:
    """Indices of at most ``epochs`` stages to keep: first, last and evenly spaced ones between."""
    if epochs >= num_stages:
        return list(range(num_stages))
    if epochs == 1:
        return [num_stages - 1]
    return sorted({round(i * (num_stages - 1) / (epochs - 1)) for i in range(epochs)})


def split_epochs(num_stages: int, epochs: int) -> list[tuple[int, int]]:
    """``epochs // n`` epochs per stage, the last stage takes the remainder."""
    per = epochs // num_stages
    bounds = [(k * per, (k + 1) * per) for k in range(num_stages - 1)]
    bounds.append(((num_stages - 1) * per, epochs))
    return bounds


def performance_batches(patches: list[tuple[int, ...]], final_batch: int) -> list[int]:
    """Journal performance mode: ``floor(bs * |P| / |P_k|)`` per stage; voxels per batch at most
    the baseline's, each stage as close to it as a whole batch allows."""
    full = _volume(patches[-1]) * final_batch
    return [max(final_batch, full // _volume(p)) for p in patches]


def pgps_plus_batches(patches: list[tuple[int, ...]], final_batch: int) -> list[int]:
    """MICCAI PGPS+ (``plan_batch_size``): walk back from the last stage, ``bs_k = floor(|P_{k+1}|
    / |P_k| * bs_{k+1})``, truncating at every step (so the loss compounds), then at least the
    plan batch. The official code starts the walk from a hard-coded 2; we start it from the plan
    batch. Integer arithmetic: the official float expression gives the same numbers on every plan
    we tried (all 2D/3D plans with 0-6 poolings and 1-8 steps per axis, batches 1, 2, 3, 5)."""
    batches = [final_batch]
    for k in range(len(patches) - 2, -1, -1):
        batches.append(_volume(patches[k + 1]) * batches[-1] // _volume(patches[k]))
    return [max(b, final_batch) for b in reversed(batches)]


def build_schedule(
    patch_size: tuple[int, ...] | list[int],
    poolings: tuple[int, ...] | list[int],
    epochs: int,
    batch_size: int = 2,
    mode: str = "pgps",
    seed: int = 0,
    start_bottleneck: tuple[int, ...] | None = None,
    stage_epochs: list[int] | None = None,
    stage_indices: list[int] | None = None,
) -> Schedule:
    """Compute the curriculum. ``stage_epochs`` overrides the even split (used by the
    time-budgeted curriculum); it must give one positive count per stage summing to ``epochs``.
    ``stage_indices`` keeps only those stages of the mode's full curriculum (a budget too short
    for every stage thins it); they must rise strictly and end at the full-size stage."""
    patch = tuple(int(x) for x in patch_size)
    pools = tuple(int(x) for x in poolings)
    _validate(patch, pools, epochs, batch_size)
    if mode not in MODES:
        raise ScheduleError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")

    if mode == "constant":
        patches = [patch]
    elif mode in ("efficiency", "performance"):
        patches = greedy_patches(patch, pools, start_bottleneck)
    else:
        patches = round_robin_patches(patch, pools)

    candidates: tuple[tuple[int, ...], ...] = ()
    if mode == "rpss":
        candidates = tuple(patches)
        patches = [patch]

    # batches belong to the full curriculum's stages: thinning or selecting keeps them as they are
    if mode == "pgps+":
        batches = pgps_plus_batches(patches, batch_size)
    elif mode == "performance":
        batches = performance_batches(patches, batch_size)
    else:
        batches = [batch_size] * len(patches)

    if stage_indices is not None:
        idx = list(stage_indices)
        if not idx or idx != sorted(set(idx)) or idx[0] < 0 or idx[-1] != len(patches) - 1:
            raise ScheduleError(
                f"stage_indices {idx} must rise strictly within 0..{len(patches) - 1} and end at the full-size stage"
            )
        patches, batches = [patches[i] for i in idx], [batches[i] for i in idx]

    if stage_epochs is not None:
        if len(stage_epochs) != len(patches) or any(e < 1 for e in stage_epochs) or sum(stage_epochs) != epochs:
            raise ScheduleError(
                f"stage_epochs {stage_epochs} must hold {len(patches)} positive counts summing to {epochs}"
            )
        edges = [0]
        for e in stage_epochs:
            edges.append(edges[-1] + e)
        bounds = list(zip(edges[:-1], edges[1:]))
    else:
        keep = thin_indices(len(patches), epochs)
        patches, batches = [patches[i] for i in keep], [batches[i] for i in keep]
        bounds = split_epochs(len(patches), epochs)

    stages = tuple(
        Stage(patch_size=p, batch_size=b, start_epoch=s, end_epoch=e) for p, b, (s, e) in zip(patches, batches, bounds)
    )
    return Schedule(
        mode=mode,
        planned_patch_size=patch,
        planned_batch_size=batch_size,
        poolings=pools,
        num_epochs=epochs,
        stages=stages,
        seed=seed,
        candidates=candidates,
    )


def format_table(schedule: Schedule) -> str:
    """Human-readable curriculum, printed before a multi-day run."""
    full = _volume(schedule.planned_patch_size)
    lines = [
        f"mode {schedule.mode}: planned patch {'x'.join(map(str, schedule.planned_patch_size))}, "
        f"batch {schedule.planned_batch_size}, poolings {list(schedule.poolings)}, {schedule.num_epochs} epochs",
        f"{'stage':>5}  {'patch':>14}  {'batch':>5}  {'epochs':>13}  {'voxels/sample':>13}",
    ]
    for i, st in enumerate(schedule.stages):
        lines.append(
            f"{i:>5}  {'x'.join(map(str, st.patch_size)):>14}  {st.batch_size:>5}  "
            f"{f'{st.start_epoch}-{st.end_epoch - 1}':>13}  {_volume(st.patch_size) / full:>13.3f}"
        )
    if schedule.candidates:
        lines.append(
            "rpss draws one patch per iteration uniformly from: "
            + ", ".join("x".join(map(str, c)) for c in schedule.candidates)
        )
    lines.append(f"voxel fraction (compute vs constant patch): {schedule.voxel_fraction:.3f}")
    return "\n".join(lines)
