"""The tasks the project knows, as data: the ten MSD tasks with the MD5 of their published tarballs, and the
generated reduced tasks with their geometry. Standard library only and no other project module, so that code
which only LISTS tasks (the params schema, hence every pipeline stage) does not depend on the downloader or the
generator: editing those never invalidates a training in DVC's eyes."""

from __future__ import annotations

import re
from dataclasses import dataclass

# The MD5 of each tarball as MONAI publishes it for the public mirror its DecathlonDataset uses.
MSD_MD5: dict[str, str] = {
    "Task01_BrainTumour": "240a19d752f0d9e9101544901065d872",
    "Task02_Heart": "06ee59366e1e5124267b774dbd654057",
    "Task03_Liver": "a90ec6c4aa7f6a3d087205e23d4e6397",
    "Task04_Hippocampus": "9d24dba78a72977dbd1d2e110310f31b",
    "Task05_Prostate": "35138f08b1efaef89d7424d2bcc928db",
    "Task06_Lung": "8afd997733c7fc0432f71255ba4e52dc",
    "Task07_Pancreas": "4f7080cfca169fa8066d17ce6eb061e4",
    "Task08_HepaticVessel": "641d79e80ec66453921d997fbf12a29c",
    "Task09_Spleen": "410d4a301da4e5b2f6f86ec3ddba524e",
    "Task10_Colon": "bad7a188931dc2f6acf72b08eb6202d0",
}
#: an MSD-style task folder name (nnU-Net's converter needs exactly one ``_``); use with ``fullmatch``
TASK_NAME_RE = re.compile(r"Task\d{2,3}_[A-Za-z0-9]+")


@dataclass(frozen=True)
class Variant:
    """A generated reduced task (``pgps make-task --variant KEY``)."""

    task_name: str
    shape: tuple[int, int, int]  # (z, y, x) voxels
    spacing: tuple[float, float, float]  # (z, y, x) mm
    num_train: int = 12  # training cases (the default profile's folds each hold out a fifth of them)
    lesions: tuple[int, int] = (1, 2)  # least and most lesions per case
    lesion_scale: tuple[float, float] = (0.35, 0.55)  # lesion radii as a share of the organ's, drawn per axis


VARIANTS: dict[str, Variant] = {
    "iso": Variant("Task901_PGPSSynth", (32, 32, 32), (1.0, 1.0, 1.0)),
    "aniso": Variant("Task902_PGPSSynthAniso", (16, 40, 40), (3.0, 1.0, 1.0)),
    # the default profile's task: one lesion per case, larger than the others' (converges in a short CPU run)
    "small": Variant("Task903_PGPSSynthSmall", (16, 16, 16), (1.0, 1.0, 1.0), 20, (1, 1), (0.6, 0.8)),
}
TASK_VARIANT = {v.task_name: k for k, v in VARIANTS.items()}
