"""nnUNetTrainerConstant with a 250-epoch budget: the like-for-like baseline of
nnUNetTrainerPGPS_250epochs; the number is read from the name."""

from pgps.nnunet.variants import pgps_class
from pgps.trainers.nnUNetTrainerConstant import nnUNetTrainerConstant


@pgps_class
class nnUNetTrainerConstant_250epochs(nnUNetTrainerConstant):
    pass
