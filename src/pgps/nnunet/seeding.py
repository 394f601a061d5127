"""PGPS_SEED -> python, numpy and torch RNGs. With ``nnUNet_n_proc_DA=0`` every random draw
(sampling, augmentation, weight init) happens in the main process, so a CPU run repeats."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
