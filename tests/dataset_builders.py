"""Test support for `pgps validate-dataset`: tiny MSD-layout tasks and nnU-Net raw datasets built with nibabel."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (6, 7, 8)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def image_array(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)


def label_array(rng: np.random.Generator, shape: tuple[int, ...] = SHAPE, top: int = 2) -> np.ndarray:
    lab = rng.integers(0, top + 1, size=shape).astype(np.uint8)
    lab.flat[: top + 1] = np.arange(top + 1)  # every declared value present
    return lab


def make_msd(root: Path, name: str = "Task09_Spleen", cases: int = 3, channels: int = 1) -> Path:
    """An MSD-layout task; channels > 1 gives 4D images like BrainTumour. No 'release' key, like Task04's typo."""
    rng = np.random.default_rng(1)
    task = root / name
    training = []
    for i in range(cases):
        fn = f"case_{i:03d}.nii.gz"
        write_nifti(task / "imagesTr" / fn, image_array(rng, SHAPE + ((channels,) if channels > 1 else ())))
        write_nifti(task / "labelsTr" / fn, label_array(rng))
        training.append({"image": f"./imagesTr/{fn}", "label": f"./labelsTr/{fn}"})
    write_nifti(task / "imagesTs" / "case_900.nii.gz", image_array(rng, SHAPE + ((channels,) if channels > 1 else ())))
    (task / "imagesTr" / "._case_000.nii.gz").write_bytes(b"\x00\x05\x16\x07Mac OS X")  # resource fork: ignored
    dataset = {
        "name": name.split("_", 1)[1],
        "modality": {str(c): f"MR{c}" for c in range(channels)},
        "labels": {"0": "background", "1": "organ", "2": "lesion"},
        "numTraining": cases,
        "numTest": 1,
        "relaese": "typo as in Task04",
        "training": training,
        "test": ["./imagesTs/case_900.nii.gz"],
    }
    (task / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return task


def make_nnunet(root: Path, name: str = "Dataset009_Spleen", cases: int = 3, channels: int = 2) -> Path:
    """An nnU-Net v2 raw dataset: one 3D file per channel (_0000, _0001), labels under labelsTr."""
    rng = np.random.default_rng(2)
    ds = root / name
    for i in range(cases):
        for c in range(channels):
            write_nifti(ds / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz", image_array(rng, SHAPE))
        write_nifti(ds / "labelsTr" / f"case_{i:03d}.nii.gz", label_array(rng))
    dataset = {
        "channel_names": {str(c): f"MR{c}" for c in range(channels)},
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (ds / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return ds


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its size and mtime: validation must change none of them."""
    out = {}
    for base, dirs, files in os.walk(folder):
        for n in dirs + files:
            st = os.lstat(os.path.join(base, n))
            out[os.path.relpath(os.path.join(base, n), folder)] = (st.st_size, st.st_mtime_ns)
    return out
