"""What one curriculum stage means on this rank, and its training loader. The trainer base applies
a stage in ONE place (``PGPSTrainerBase.pgps_apply_stage``); this module computes what it needs:
the rank's share of the stage batch (split like nnU-Net splits the planned batch), its share of
foreground oversampling, and the loader -- nnU-Net's pipeline for the stage's patch, or for RPSS
one loader per candidate patch behind a per-iteration switch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgps.nnunet.geometry import rank_batch_sizes, rank_oversample
from pgps.nnunet.loaders import PatchSwitch, build_train_loader
from pgps.schedule import Schedule, Stage

if TYPE_CHECKING:
    from pgps.nnunet.base import PGPSTrainerBase


@dataclass(frozen=True)
class RankStage:
    index: int
    stage: Stage
    rank_batch: int  # this rank's share of stage.batch_size
    oversample: float  # this rank's foreground-oversampling share

    @property
    def name(self) -> str:
        """Used for codecarbon's task and the log: ``stage03_24x16x16_b4``."""
        return f"stage{self.index:02d}_{'x'.join(map(str, self.stage.patch_size))}_b{self.stage.batch_size}"


def rank_stage(schedule: Schedule, index: int, world: int, rank: int, global_oversample: float) -> RankStage:
    stage = schedule.stages[index]
    return RankStage(
        index=index,
        stage=stage,
        rank_batch=rank_batch_sizes(stage.batch_size, world)[rank],
        oversample=rank_oversample(stage.batch_size, world, rank, global_oversample),
    )


def rpss_pick(schedule: Schedule, epoch: int) -> Callable[[int], tuple[int, ...]]:
    """Iteration -> the patch RPSS draws for it in ``epoch`` (a pure function; resume-safe)."""
    return lambda it: schedule.rpss_patch(epoch, it)


def _n_proc_per_loader(n_loaders: int) -> int:
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    n = get_allowed_n_proc_DA()
    return 0 if n == 0 else max(1, n // n_loaders)


def build_stage_loader(trainer: PGPSTrainerBase, rs: RankStage, epoch: int) -> Any:
    """The training loader of stage ``rs`` (RPSS: one loader per candidate patch), augmented as
    ``PGPS_AUGMENTATION`` says (pgps.nnunet.augmentation)."""
    schedule, aug = trainer.pgps_schedule, trainer.pgps_knobs.augmentation
    if schedule.candidates:
        n = _n_proc_per_loader(len(schedule.candidates))
        loaders = {
            tuple(c): build_train_loader(trainer, c, rs.rank_batch, rs.oversample, num_processes=n, augmentation=aug)
            for c in schedule.candidates
        }
        return PatchSwitch(loaders, rpss_pick(schedule, epoch))
    cases = trainer.pgps_rank_batch(trainer.pgps_planned_batch) if trainer.pgps_multicrop else None
    return build_train_loader(
        trainer, rs.stage.patch_size, rs.rank_batch, rs.oversample, cases_per_batch=cases, augmentation=aug
    )
