"""PGPS (MICCAI schedule) on nnU-Net's ``nnUNetTrainerBN``: the variant's network (batch norm instead
of instance norm) trained on the PGPS stage patches."""

from nnunetv2.training.nnUNetTrainer.variants.network_architecture.nnUNetTrainerBN import nnUNetTrainerBN

from pgps.nnunet.variants import pgps_class
from pgps.trainers.nnUNetTrainerPGPS import nnUNetTrainerPGPS


@pgps_class
class nnUNetTrainerPGPS_BN(nnUNetTrainerPGPS, nnUNetTrainerBN):
    pass
