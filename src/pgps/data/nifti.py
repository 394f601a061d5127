"""Read NIfTI files whose headers cannot be trusted, with memory bounded by what the file really holds.

A NIfTI header states the image's shape and data type, and readers allocate ``shape x itemsize`` bytes before
reading: a 1 kB file claiming 10^12 voxels would ask for a terabyte. Here the claim is checked against the file
first. An uncompressed ``.nii`` must be at least as long as the claim (its voxels are then memory-mapped). A
``.nii.gz`` cannot expand more than 1032-fold (deflate's limit), so a larger claim is refused at once; below
that, the voxels are decompressed into a buffer that grows only as data arrives, so a lie costs at most what the
file really decompresses to, and a short stream is reported as truncated.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from typing import Any

import numpy as np

from pgps.data.messages import squeeze
from pgps.errors import PGPSError

DEFLATE_MAX_RATIO = 1032  # zlib: the most a deflate stream can expand
CHUNK = 1 << 22


def load(path: str) -> Any:
    """The image with its header parsed and its voxels not yet read; one line naming ``path`` if unreadable."""
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises many types for a damaged file; all mean the same to a user
        raise PGPSError(f"{path}: not a readable NIfTI ({type(exc).__name__}: {squeeze(exc)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise PGPSError(f"{path}: not a NIfTI image (nibabel reads it as {type(img).__name__})")
    return img


def _claim(img: Any, path: str) -> tuple[tuple[int, ...], np.dtype, int, int]:
    """(shape, dtype, voxel bytes, offset of the voxels) as the header states them (read off nibabel's proxy,
    which is what ``np.asarray(img.dataobj)`` would allocate and read)."""
    try:
        proxy = img.dataobj
        shape = tuple(int(n) for n in proxy.shape)
        dtype = np.dtype(proxy.dtype)
        offset = int(proxy.offset)
    except Exception as exc:  # a damaged header field: a data type or offset nibabel cannot represent
        raise PGPSError(f"{path}: not a readable NIfTI (header: {type(exc).__name__}: {squeeze(exc)})") from None
    if any(n < 0 for n in shape) or offset < 0:
        raise PGPSError(f"{path}: header states a negative size (shape {shape}, voxel offset {offset})")
    return shape, dtype, math.prod(shape) * dtype.itemsize, offset


def _gunzip_prefix(path: str, wanted: int) -> bytearray:
    """The first ``wanted`` decompressed bytes (fewer if the stream is shorter); grows only as data arrives."""
    out = bytearray()
    try:
        with gzip.open(path, "rb") as fh:
            while len(out) < wanted:
                block = fh.read(min(CHUNK, wanted - len(out)))
                if not block:
                    break
                out += block
    except (OSError, EOFError, zlib.error) as exc:
        raise PGPSError(f"{path}: not a readable NIfTI (voxel data: {type(exc).__name__}: {squeeze(exc)})") from None
    return out


def voxels(img: Any, path: str) -> np.ndarray:
    """The image's voxel values (scaled as the header says), read only after the header's size is checked."""
    shape, dtype, nbytes, offset = _claim(img, path)
    claim = f"header claims {shape} voxels of {dtype} ({nbytes} bytes)"
    size = os.path.getsize(path)
    if path.endswith(".gz"):
        if offset + nbytes > DEFLATE_MAX_RATIO * size:
            raise PGPSError(f"{path}: {claim}, more than a {size}-byte gzip file can hold (damaged or forged header)")
        raw = _gunzip_prefix(path, offset + nbytes)
        if len(raw) < offset + nbytes:
            got = max(0, len(raw) - offset)
            raise PGPSError(f"{path}: {claim} but the file decompresses to {got} bytes of voxels (truncated?)")
        try:
            arr = np.ndarray(shape, dtype=dtype, buffer=raw, offset=offset, order="F")
        except (TypeError, ValueError) as exc:
            raise PGPSError(f"{path}: voxel data of type {dtype} cannot be read ({squeeze(exc)})") from None
        return _scaled(arr, img.dataobj.slope, img.dataobj.inter)
    if size < offset + nbytes:
        raise PGPSError(
            f"{path}: {claim} but the file holds {max(0, size - offset)} bytes after the header (truncated?)"
        )
    try:
        return np.asarray(img.dataobj)  # memory-mapped: nothing beyond the file is allocated
    except Exception as exc:
        raise PGPSError(f"{path}: not a readable NIfTI (voxel data: {type(exc).__name__}: {squeeze(exc)})") from None


def _scaled(arr: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """The header's linear scaling (scl_slope, scl_inter) exactly as nibabel's ArrayProxy applies it, so the
    values (and their dtype) are those ``np.asarray(img.dataobj)`` gives."""
    from nibabel.volumeutils import apply_read_scaling

    scl_slope = np.asanyarray(slope)
    scl_inter = np.asanyarray(inter)
    use_dtype = scl_slope.dtype
    if np.can_cast(scl_slope, use_dtype):
        scl_slope = scl_slope.astype(use_dtype)
    if np.can_cast(scl_inter, use_dtype):
        scl_inter = scl_inter.astype(use_dtype)
    return apply_read_scaling(arr, scl_slope, scl_inter)  # type: ignore[arg-type]  # nibabel types 0-d arrays as scalars
