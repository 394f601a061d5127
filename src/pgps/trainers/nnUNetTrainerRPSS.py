"""RPSS ablation: every iteration trains on one of the PGPS patch sizes drawn uniformly at
random (a pure function of seed, epoch, iteration); one in-process loader per candidate."""

from typing import ClassVar

from pgps.nnunet.base import PGPSTrainerBase


class nnUNetTrainerRPSS(PGPSTrainerBase):
    pgps_mode: ClassVar[str] = "rpss"
