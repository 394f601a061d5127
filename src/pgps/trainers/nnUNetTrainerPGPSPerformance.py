"""Journal performance mode: efficiency patches, batch ``floor(bs0*|P|/|P_k|)``; a batch loads
only the planned batch's number of cases and takes several crops from each (half of them
foreground-forced), so data loading cost stays flat while the batch grows."""

from typing import ClassVar

from pgps.nnunet.base import PGPSTrainerBase


class nnUNetTrainerPGPSPerformance(PGPSTrainerBase):
    pgps_mode: ClassVar[str] = "performance"
    pgps_safe_instance_norm: ClassVar[bool] = True
    pgps_multicrop: ClassVar[bool] = True
