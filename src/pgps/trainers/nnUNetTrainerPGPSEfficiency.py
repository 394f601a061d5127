"""Journal efficiency mode: greedy growth from a 1x1x1 bottleneck, planned batch. The 1-voxel
bottleneck is made trainable by swapping this network's InstanceNorm modules for a 1-voxel-safe
twin (no global patch of torch)."""

from typing import ClassVar

from pgps.nnunet.base import PGPSTrainerBase


class nnUNetTrainerPGPSEfficiency(PGPSTrainerBase):
    pgps_mode: ClassVar[str] = "efficiency"
    pgps_safe_instance_norm: ClassVar[bool] = True
