"""PGPS+: PGPS patches, batch grown so voxels per batch stay at (never above) the baseline's."""

from typing import ClassVar

from pgps.nnunet.base import PGPSTrainerBase


class nnUNetTrainerPGPSPlus(PGPSTrainerBase):
    pgps_mode: ClassVar[str] = "pgps+"
