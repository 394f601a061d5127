"""MICCAI 2024 PGPS (efficiency schedule): round-robin growth from a 2x1x1 bottleneck."""

from typing import ClassVar

from pgps.nnunet.base import PGPSTrainerBase


class nnUNetTrainerPGPS(PGPSTrainerBase):
    pgps_mode: ClassVar[str] = "pgps"
