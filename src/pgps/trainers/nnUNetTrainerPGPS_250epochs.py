"""nnUNetTrainerPGPS with a 250-epoch budget (nnU-Net's ``nnUNetTrainer_250epochs`` convention: the
name says the budget, so its results folder is its own); the number is read from the name."""

from pgps.nnunet.variants import pgps_class
from pgps.trainers.nnUNetTrainerPGPS import nnUNetTrainerPGPS


@pgps_class
class nnUNetTrainerPGPS_250epochs(nnUNetTrainerPGPS):
    pass
