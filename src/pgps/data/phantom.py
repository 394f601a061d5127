"""The images of the reduced synthetic task: an organ with lesions, a distractor, bias field and noise.

Kept apart from ``pgps.data.synthetic`` so that listing the synthetic tasks never imports numpy, scipy or nibabel.
"""

from __future__ import annotations

import gzip
import io
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

if TYPE_CHECKING:
    from pgps.data.catalog import Variant


def case_rngs(seed: int, count: int) -> list[np.random.Generator]:
    """One independent generator per case, derived from ``seed`` (adding cases does not change earlier ones)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]


def _physical_grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[np.ndarray]:
    axes = [np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing)]
    return list(np.meshgrid(*axes, indexing="ij"))


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
    low, high = variant.lesions
    for _ in range(rng.integers(low, high + 1)):
        c = organ_center + organ_radii * rng.uniform(-0.45, 0.45, size=3)
        r = np.maximum(organ_radii * rng.uniform(*variant.lesion_scale, size=3), np.array(spacing) * 1.2)
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


def nifti_bytes(array_zyx: np.ndarray, spacing_zyx: tuple[float, float, float]) -> bytes:
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
