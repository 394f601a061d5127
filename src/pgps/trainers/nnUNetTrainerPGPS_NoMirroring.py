"""PGPS (MICCAI schedule) on nnU-Net's ``nnUNetTrainerNoMirroring``: no mirroring in any stage's
training augmentation (the variant's rule, applied to each stage patch) and none at inference."""

from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
    nnUNetTrainerNoMirroring,
)

from pgps.nnunet.variants import pgps_class
from pgps.trainers.nnUNetTrainerPGPS import nnUNetTrainerPGPS


@pgps_class
class nnUNetTrainerPGPS_NoMirroring(nnUNetTrainerPGPS, nnUNetTrainerNoMirroring):
    pass
