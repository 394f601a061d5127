"""`pgps make-task`: a small, deterministic, MSD-layout segmentation task for CPU runs.

The reduced task must go through the SAME path the real MSD tarballs take
(``nnUNetv2_convert_MSD_dataset`` -> planner -> trainer), be learnable in a few hundred
iterations yet not trivial: each case has a bright "organ" (ellipsoid or rounded box, random pose
and size), 1-2 darker "lesions" inside it, a bright distractor blob that is NOT labelled, a smooth
bias field, global intensity scale/offset and Gaussian noise. Two foreground labels.

Variants: ``iso`` (Task901_PGPSSynth, 1 mm isotropic, 32^3) and ``aniso`` (Task902_PGPSSynthAniso,
3 mm slices, 16 x 40 x 40), for which nnU-Net plans fewer poolings along the slice axis, so the
schedule sees unequal poolings. Files are byte-identical for the same seed (gzip mtime fixed), so
DVC hashes are stable. Test labels are written to ``labelsTs/`` (not listed in dataset.json, as
in MSD) so a held-out Dice can be computed.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

from pgps.errors import PGPSError


@dataclass(frozen=True)
class Variant:
    task_name: str
    shape: tuple[int, int, int]  # (z, y, x) voxels
    spacing: tuple[float, float, float]  # (z, y, x) mm


VARIANTS: dict[str, Variant] = {
    "iso": Variant("Task901_PGPSSynth", (32, 32, 32), (1.0, 1.0, 1.0)),
    "aniso": Variant("Task902_PGPSSynthAniso", (16, 40, 40), (3.0, 1.0, 1.0)),
}
TASK_VARIANT = {v.task_name: k for k, v in VARIANTS.items()}


def _physical_grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[np.ndarray]:
    axes = [np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij")


def _shape_mask(grid: list[np.ndarray], center: np.ndarray, radii: np.ndarray, kind: str) -> np.ndarray:
    rel = [(g - c) / r for g, c, r in zip(grid, center, radii)]
    if kind == "ellipsoid":
        return sum(r**2 for r in rel) <= 1.0
    # rounded box: superellipsoid with exponent 4
    return sum(np.abs(r) ** 4 for r in rel) <= 1.0


def make_case(rng: np.random.Generator, variant: Variant) -> tuple[np.ndarray, np.ndarray]:
    """One (image, label) pair in (z, y, x) order; label 0 background, 1 organ, 2 lesion."""
    shape, spacing = variant.shape, variant.spacing
    grid = _physical_grid(shape, spacing)
    extent = np.array([n * s for n, s in zip(shape, spacing)], dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)

    organ_center = extent * rng.uniform(0.38, 0.62, size=3)
    organ_radii = extent * rng.uniform(0.2, 0.3, size=3)
    organ = _shape_mask(grid, organ_center, organ_radii, rng.choice(["ellipsoid", "box"]))
    label[organ] = 1
    for _ in range(rng.integers(1, 3)):
        c = organ_center + organ_radii * rng.uniform(-0.45, 0.45, size=3)
        r = np.maximum(organ_radii * rng.uniform(0.35, 0.55, size=3), np.array(spacing) * 1.2)
        label[_shape_mask(grid, c, r, "ellipsoid") & organ] = 2

    # an unlabelled bright distractor in a corner region, so "bright = organ" is not enough
    d_center = extent * rng.choice([0.15, 0.85], size=3)
    d_radii = extent * rng.uniform(0.08, 0.12, size=3)
    distractor = _shape_mask(grid, d_center, d_radii, "ellipsoid") & (label == 0)

    image = np.full(shape, 0.2, dtype=np.float32)
    image[label == 1] = 1.0
    image[label == 2] = 0.55
    image[distractor] = 0.9 + 0.3 * rng.standard_normal(int(distractor.sum())).astype(np.float32)
    image = gaussian_filter(image, sigma=0.7 / np.array(spacing))
    bias = (
        1.0
        + 0.25
        * sum(np.sin(g / e * np.pi * rng.uniform(0.5, 1.5) + rng.uniform(0, np.pi)) for g, e in zip(grid, extent))
        / 3.0
    )
    image = image * bias + rng.normal(0.0, 0.12, size=shape).astype(np.float32)
    image = image * rng.uniform(80.0, 120.0) + rng.uniform(-20.0, 20.0)
    return image.astype(np.float32), label


def _nifti_bytes(array_zyx: np.ndarray, spacing_zyx: tuple[float, float, float]) -> bytes:
    """Gzipped NIfTI with mtime 0 (byte-identical across runs). Arrays are stored (x, y, z)."""
    affine = np.diag([spacing_zyx[2], spacing_zyx[1], spacing_zyx[0], 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), affine)
    img.header.set_xyzt_units("mm", "sec")
    raw = io.BytesIO()
    file_map = nib.Nifti1Image.make_file_map({"image": raw, "header": raw})
    img.to_file_map(file_map)
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def make_task(out_dir: Path, seed: int, variant: str = "iso", num_train: int = 12, num_test: int = 4) -> Path:
    """Write ``out_dir/<TaskNNN_Name>`` atomically (built in a temp dir, then renamed)."""
    if variant not in VARIANTS:
        raise PGPSError(f"unknown synthetic variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if num_train < 2 or num_test < 0:
        raise PGPSError(f"need at least 2 training cases and >= 0 test cases, got {num_train}/{num_test}")
    spec = VARIANTS[variant]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / spec.task_name
    prefix = spec.task_name.split("_", 1)[1].lower()
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(num_train + num_test)]

    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.task_name}.", dir=out_dir))
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir()
        training, test = [], []
        for i, rng in enumerate(rngs):
            image, label = make_case(rng, spec)
            name = f"{prefix}_{i:03d}.nii.gz"
            split = "Tr" if i < num_train else "Ts"
            (tmp / f"images{split}" / name).write_bytes(_nifti_bytes(image, spec.spacing))
            (tmp / f"labels{split}" / name).write_bytes(_nifti_bytes(label, spec.spacing))
            if split == "Tr":
                training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
            else:
                test.append(f"./imagesTs/{name}")
        dataset = {
            "name": spec.task_name.split("_", 1)[1],
            "description": f"PGPS reduced synthetic task ({variant}), seed {seed}",
            "reference": "generated by pgps make-task",
            "licence": "CC-BY-SA 4.0",
            "tensorImageSize": "3D",
            "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "organ", "2": "lesion"},
            "numTraining": num_train,
            "numTest": num_test,
            "training": training,
            "test": test,
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to write TaskNNN_Name/ into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="iso")
    parser.add_argument("--num-train", type=int, default=12)
    parser.add_argument("--num-test", type=int, default=4)


def main(args: argparse.Namespace) -> int:
    path = make_task(args.out, args.seed, args.variant, args.num_train, args.num_test)
    print(path)
    return 0
