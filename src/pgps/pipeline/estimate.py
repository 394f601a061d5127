"""What a grid will cost before it runs: trainings, GPU-hours, disk (`pgps reproduce --list`).

The numbers are a model, and every line says what it rests on. GPU time comes from MEASURED step times
(one NVIDIA H200, nnU-Net's default network for a 128^3 patch with 5/5/5 poolings, batch 2, eager;
``benchmarks/gpu/h200_stage_speed_eager_autodynamic.json``, README "Performance"): each run's curriculum
is built for that plan with the run's own mode and budget, and a step's time is read off the measured
steps by its voxels per batch (linear between measured points, the smallest measured step's time below
them, proportional above them). The MSD tasks' own plans are not known before planning, so every task is
assumed to be that plan. Disk: the checkpoints nnU-Net keeps (final + best; weights and SGD momentum of
that network) and the data (tarballs, extracted, converted, preprocessed), each DVC output stored once
more in DVC's cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pgps.params import Params, TrainerSpec
from pgps.schedule import Schedule, build_schedule
from pgps.schema import MSD_TASKS, TRAINER_MODES

#: (patch, batch, seconds per training step) measured on one H200 (README "Performance"; the JSON above)
H200_STEPS: tuple[tuple[tuple[int, int, int], int, float], ...] = (
    ((64, 32, 32), 2, 0.024130009000003838),
    ((64, 64, 32), 2, 0.02291698950000054),
    ((64, 64, 64), 2, 0.032536043500002165),
    ((96, 64, 64), 2, 0.034056064500006755),
    ((96, 96, 64), 2, 0.03729633350000228),
    ((96, 96, 96), 2, 0.03530147250000226),
    ((128, 96, 96), 2, 0.04064856900001246),
    ((128, 128, 96), 2, 0.0547117280000009),
    ((128, 128, 128), 2, 0.06704172399999209),
)
MEASURED_PATCH, MEASURED_POOLINGS, MEASURED_BATCH = (128, 128, 128), (5, 5, 5), 2
#: parameters of nnU-Net's default 3d_fullres network for that plan (PlainConvUNet, 6 stages, 32..320
#: features, 2 convolutions per stage, deep supervision), counted with torch
MEASURED_NET_PARAMS = 31_196_399
CHECKPOINTS_KEPT = 2  # checkpoint_final + checkpoint_best (nnU-Net deletes checkpoint_latest at the end)
BYTES_PER_PARAM = 4 * 2  # float32 weights + SGD momentum buffer
#: approximate MSD tarball sizes in GB (assumption: the published files' sizes, rounded); an already
#: downloaded tarball's real size replaces its entry
MSD_TARBALL_GB = dict(zip(MSD_TASKS, (7.1, 0.44, 27.1, 0.03, 0.23, 8.5, 11.4, 8.8, 1.5, 5.9), strict=True))
#: the DVC outputs made from a tarball, in tarballs: data/raw (extracted), nnUNet_raw (converted),
#: preprocessed (assumed 2x: blosc2 float32 against the tarballs' compressed int16); the tarball itself
#: (data/downloads) is no DVC output
DVC_OUTPUT_COPIES = 1 + 1 + 2
DVC_CACHED_COPIES = 2  # workspace + DVC cache (a copy on file systems without reflinks)
#: the largest synthetic task's network (Task901, 32^3 patch, 4 stages 32..256 features), counted with torch
SYNTHETIC_NET_PARAMS = 5_600_000


def _voxels_per_step(patch: tuple[int, ...], batch: int) -> int:
    return batch * math.prod(patch)


def step_seconds(patch: tuple[int, ...], batch: int) -> float:
    """Seconds of one training step at this patch and batch, read off the measured H200 steps."""
    points = sorted((_voxels_per_step(p, b), s) for p, b, s in H200_STEPS)
    v = _voxels_per_step(patch, batch)
    if v <= points[0][0]:
        return points[0][1]  # launch-bound: a smaller step is not faster than the smallest measured one
    if v >= points[-1][0]:
        return points[-1][1] * v / points[-1][0]
    for (v0, s0), (v1, s1) in zip(points, points[1:]):
        if v0 <= v <= v1:
            return s0 + (s1 - s0) * (v - v0) / (v1 - v0)
    raise AssertionError("unreachable: v lies within the measured range")


def run_schedule(spec: TrainerSpec, seed: int) -> Schedule:
    """The run's curriculum on the measured plan (its mode, its epochs)."""
    mode = TRAINER_MODES[spec.trainer_class]
    return build_schedule(MEASURED_PATCH, MEASURED_POOLINGS, spec.budget.epochs, MEASURED_BATCH, mode, seed)


def run_gpu_seconds(spec: TrainerSpec, seed: int) -> float:
    """Training steps along the curriculum plus the per-epoch validation steps at the full patch (each
    counted as a training step: an upper bound, validation only runs forward)."""
    sched = run_schedule(spec, seed)
    iters = spec.budget.iters_per_epoch
    if sched.candidates:  # rpss: the expected step over the uniform draw
        per_step = sum(step_seconds(c, sched.planned_batch_size) for c in sched.candidates) / len(sched.candidates)
        train = spec.budget.epochs * iters * per_step
    else:
        train = sum(st.num_epochs * iters * step_seconds(st.patch_size, st.batch_size) for st in sched.stages)
    full = step_seconds(sched.planned_patch_size, sched.planned_batch_size)
    return train + spec.budget.epochs * spec.budget.val_iters * full


@dataclass(frozen=True)
class Estimate:
    trainings: int
    msd_trainings: int  # the ones the GPU-time and checkpoint model covers
    gpu_hours: float
    per_run_hours: dict[str, float]  # one training of each run on the measured plan
    checkpoint_gb: float
    data_gb: float
    real_sizes: tuple[str, ...]  # tasks whose downloaded tarball gave the size


def estimate(params: Params, downloads: Path = Path("data/downloads")) -> Estimate:
    msd = [t for t in params.tasks if t in MSD_TASKS]
    per_training = len(params.folds) * len(params.trainers)
    per_run = {name: run_gpu_seconds(spec, params.seed) / 3600 for name, spec in params.trainers.items()}
    checkpoints = {t: MEASURED_NET_PARAMS if t in MSD_TASKS else SYNTHETIC_NET_PARAMS for t in params.tasks}
    checkpoint_gb = sum(CHECKPOINTS_KEPT * n * BYTES_PER_PARAM * per_training for n in checkpoints.values()) / 1e9
    tarball_gb, real = 0.0, []
    for task in msd:
        tarball = downloads / f"{task}.tar"
        if tarball.is_file():
            tarball_gb += tarball.stat().st_size / 1e9
            real.append(task)
        else:
            tarball_gb += MSD_TARBALL_GB[task]
    return Estimate(
        trainings=len(params.tasks) * per_training,
        msd_trainings=len(msd) * per_training,
        gpu_hours=len(msd) * len(params.folds) * sum(per_run.values()),
        per_run_hours=per_run,
        checkpoint_gb=checkpoint_gb * DVC_CACHED_COPIES,
        data_gb=tarball_gb * (1 + DVC_OUTPUT_COPIES * DVC_CACHED_COPIES),
        real_sizes=tuple(real),
    )


def describe(params: Params, downloads: Path = Path("data/downloads")) -> list[str]:
    """The estimate as lines for the terminal, each with what it assumes."""
    e = estimate(params, downloads)
    grid = f"{len(params.tasks)} tasks x {len(params.trainers)} runs x {len(params.folds)} folds"
    lines = [f"trainings: {e.trainings} ({grid})"]
    if params.device != "cuda":
        lines.append("GPU time: none (device cpu); the default profile's measured CPU time: results/CONVERGENCE.md")
    elif e.msd_trainings:
        each = ", ".join(f"{n} {h:.1f}" for n, h in e.per_run_hours.items())
        lines.append(
            f"GPU time: ~{e.gpu_hours:,.0f} GPU-hours for the {e.msd_trainings} MSD trainings (one training, hours: "
            f"{each}); from step times measured on an H200 for a 128^3 patch, 5/5/5 poolings, batch 2, eager "
            "(README Performance), every task assumed to plan that network; data loading, final validation and "
            "inference not included"
        )
    if e.msd_trainings < e.trainings:
        lines.append("synthetic tasks: minutes each on a CPU (results/CONVERGENCE.md), not modelled here")
    sizes = f"real sizes of {', '.join(e.real_sizes)}, the others" if e.real_sizes else "tarballs"
    lines.append(
        f"disk: ~{e.checkpoint_gb + e.data_gb:,.1f} GB = checkpoints ~{e.checkpoint_gb:,.1f} GB (final + best per "
        f"training with SGD momentum: {MEASURED_NET_PARAMS / 1e6:.1f}M parameters for an MSD task's assumed "
        f"network, <= {SYNTHETIC_NET_PARAMS / 1e6:.1f}M for a synthetic one; x2 for DVC's cache) + MSD data "
        f"~{e.data_gb:,.1f} GB ({sizes} at their approximate published sizes; extracted, converted and "
        "preprocessed at ~2x, each a DVC output stored twice)"
    )
    return lines
