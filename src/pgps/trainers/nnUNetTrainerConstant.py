"""Constant-patch baseline with the same budget knobs, record and energy tracking as the PGPS
trainers, so comparisons are like for like (the paper's plain ``nnUNetTrainer`` tracked nothing)."""

from typing import ClassVar

from pgps.nnunet.base import PGPSTrainerBase


class nnUNetTrainerConstant(PGPSTrainerBase):
    pgps_mode: ClassVar[str] = "constant"
    pgps_oversample: ClassVar[float | None] = None  # nnU-Net's default, as the paper's baseline
