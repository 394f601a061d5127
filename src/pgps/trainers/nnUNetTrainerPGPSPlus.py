"""MICCAI PGPS+: the PGPS patches with a batch walked back from the plan batch at the last stage,
``bs_k = floor(|P_{k+1}| / |P_k| * bs_{k+1})`` (the official ``plan_batch_size``, truncating at every
step): voxels per batch rise over training, never above the baseline's (``pgps.schedule``)."""

from typing import ClassVar

from pgps.nnunet.base import PGPSTrainerBase


class nnUNetTrainerPGPSPlus(PGPSTrainerBase):
    pgps_mode: ClassVar[str] = "pgps+"
