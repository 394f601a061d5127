"""`pgps validate-dataset`: find a broken dataset in seconds, before planning and days of training.

Checks an MSD-layout task (dataset.json with modality/labels/training/test) or an nnU-Net v2 raw dataset
(channel_names/labels/numTraining/file_ending, imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz). The first
problem found becomes one PGPSError naming the file and what is wrong. Only reads: nothing is written into the
dataset folder.

Hostile or damaged input gives one line too, never a traceback or a hang: every path is inspected before it is
opened (broken or looping symlinks, folders where files belong, FIFOs, unreadable files and folders), and voxels
are read only after the header's claimed size is checked against the file (``pgps.data.nifti``), so memory is
bounded by what is on disk, not by what a header says. A progress bar over the cases shows on a terminal only.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pgps.data import nifti
from pgps.data.fsinspect import dir_problem, file_problem, list_dir, require_file
from pgps.data.messages import squeeze, user_errors
from pgps.data.progress import bar
from pgps.errors import PGPSError
from pgps.fileio import read_json

NIFTI_ENDINGS = (".nii.gz", ".nii")
SPACING_RTOL = 1e-3  # MSD headers carry float noise in the 6th digit; a real mismatch is far larger
DIRECTION_ATOL = 1e-3


@dataclass(frozen=True)
class Case:
    """One training case: its image file(s) (one 3D/4D file for MSD, one 3D file per channel for nnU-Net)."""

    name: str
    images: tuple[str, ...]
    label: str


# ------------------------------------------------------------------ dataset.json
def load_dataset_json(folder: Path) -> dict[str, Any]:
    """Parse ``folder/dataset.json``; a missing or unparsable file is the first thing a user should hear about."""
    problem = dir_problem(folder)
    if problem:
        raise PGPSError(f"{folder}: {'not a directory' if problem == 'not found' else problem}")
    path = folder / "dataset.json"
    problem = file_problem(path)
    if problem == "not found":
        raise PGPSError(f"{path}: missing (every dataset needs a dataset.json)")
    if problem:
        raise PGPSError(f"{path}: {problem}")
    data = read_json(path)
    if not isinstance(data, dict):
        raise PGPSError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    return data


def _require_keys(data: dict[str, Any], keys: list[str], path: Path) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise PGPSError(f"{path}: missing required key(s) {', '.join(repr(k) for k in missing)}")


def _channel_count(mapping: Any, key: str, path: Path) -> int:
    """Channels are declared as {"0": name, "1": name, ...}; the count decides how many images a case needs."""
    if not isinstance(mapping, dict) or not mapping:
        raise PGPSError(f"{path}: {key!r} must be a non-empty object {{'0': 'CT', ...}}")
    if sorted(mapping) != [str(i) for i in range(len(mapping))]:
        raise PGPSError(f"{path}: {key!r} keys must be '0', '1', ... without gaps, got {sorted(mapping)}")
    return len(mapping)


def _layout_of(data: dict[str, Any], folder: Path) -> str:
    if "file_ending" in data or "channel_names" in data:
        return "nnunet"
    if "training" in data or "modality" in data:
        return "msd"
    if folder.name.startswith("Dataset"):
        return "nnunet"
    if folder.name.startswith("Task"):
        return "msd"
    raise PGPSError(
        f"{folder / 'dataset.json'}: cannot tell an MSD task ('modality', 'training') from an nnU-Net dataset "
        "('channel_names', 'file_ending'); pass --layout"
    )


def detect_layout(folder: Path | str) -> str:
    """'msd' or 'nnunet', from the keys dataset.json uses (then the folder name: TaskNN_ / DatasetNNN_)."""
    folder = Path(folder)
    return _layout_of(load_dataset_json(folder), folder)


# ------------------------------------------------------------------ one NIfTI file
def _load(path: str) -> Any:
    """Header only; the path was inspected when the case was listed, this re-checks it (it may have changed)."""
    require_file(path)
    return nifti.load(path)


def _data(img: Any, path: str) -> np.ndarray:
    return nifti.voxels(img, path)


def _check_geometry(img: Any, path: str) -> None:
    """Voxel sizes and the affine must be usable numbers, or every comparison below is meaningless."""
    if any(n == 0 for n in img.shape):
        raise PGPSError(f"{path}: empty image (shape {img.shape})")
    spacing = _spacing(img)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise PGPSError(f"{path}: voxel spacing {_fmt(spacing)} must be positive and finite")
    if not np.isfinite(np.asarray(img.affine, dtype=float)).all():
        raise PGPSError(f"{path}: affine (orientation) holds NaN/Inf values")


def _spacing(img: Any) -> np.ndarray:
    return np.asarray(img.header.get_zooms()[:3], dtype=float)


def _direction(img: Any) -> np.ndarray:
    """The affine's rotation part with the voxel sizes divided out: what 'orientation' means for alignment."""
    rot = np.asarray(img.affine[:3, :3], dtype=float)
    norms = np.linalg.norm(rot, axis=0)
    return rot / np.where(norms == 0, 1, norms)


def _axcodes(img: Any) -> str:
    import nibabel as nib

    return "".join(c or "?" for c in nib.aff2axcodes(img.affine))


def _fmt(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def _check_finite(img: Any, path: str) -> None:
    """Integer voxels cannot be NaN/Inf, so only float images are read in full."""
    kind = img.get_data_dtype().kind
    if kind not in "biufc":
        raise PGPSError(f"{path}: voxel data type {img.get_data_dtype()} is not numeric (nnU-Net reads numbers)")
    if kind not in "fc":
        return
    arr = _data(img, path)
    if not np.isfinite(arr).all():
        nan, inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
        raise PGPSError(f"{path}: {nan} NaN and {inf} Inf voxel value(s); replace them before training")


def _check_label_values(img: Any, path: str, declared: frozenset[int]) -> None:
    if img.get_data_dtype().kind not in "biuf":
        raise PGPSError(f"{path}: label map of data type {img.get_data_dtype()}; labels must be integer values")
    arr = _data(img, path)
    values = np.unique(arr)
    if arr.dtype.kind in "fc":
        if not np.isfinite(values).all():
            raise PGPSError(f"{path}: label map holds NaN/Inf values")
        if not np.array_equal(values, np.round(values)):
            bad = values[values != np.round(values)][:5]
            raise PGPSError(f"{path}: label map holds non-integer values {_fmt(bad)}")
    undeclared = sorted(int(v) for v in values if int(v) not in declared)
    if undeclared:
        raise PGPSError(
            f"{path}: label value(s) {undeclared} not declared in dataset.json 'labels' (declared: {sorted(declared)})"
        )


def check_case(case: Case, channels: int, declared: frozenset[int], four_d: bool) -> None:
    """Everything nnU-Net needs from one training case: readable, aligned with its label, clean values.

    ``four_d``: MSD stores all channels of a case in one 4D file; nnU-Net raw uses one 3D file per channel.
    """
    label = _load(case.label)
    if len(label.shape) != 3:
        raise PGPSError(f"{case.label}: label map must be 3D, got shape {label.shape}")
    _check_geometry(label, case.label)
    images = [_load(p) for p in case.images]
    for path, img in zip(case.images, images, strict=True):
        _check_geometry(img, path)
        shape = img.shape
        if four_d:
            got = shape[3] if len(shape) == 4 else 1
            if len(shape) not in (3, 4) or got != channels:
                raise PGPSError(
                    f"{path}: shape {shape} holds {got} channel(s) but dataset.json 'modality' declares {channels}"
                    + (" (multi-channel MSD images are 4D: X, Y, Z, channel)" if channels > 1 else "")
                )
        elif len(shape) != 3:
            raise PGPSError(f"{path}: image must be 3D (one file per channel), got shape {shape}")
        if tuple(shape[:3]) != tuple(label.shape):
            raise PGPSError(f"{path}: shape {shape[:3]} does not match its label {case.label} {label.shape}")
        if not np.allclose(_spacing(img), _spacing(label), rtol=SPACING_RTOL, atol=1e-6):
            raise PGPSError(
                f"{path}: spacing {_fmt(_spacing(img))} does not match its label {case.label} {_fmt(_spacing(label))}"
            )
        if not np.allclose(_direction(img), _direction(label), atol=DIRECTION_ATOL):
            codes, label_codes = _axcodes(img), _axcodes(label)
            detail = ""
            if codes == label_codes:  # same nearest axes, yet rotated: say by how much
                diff = float(np.abs(_direction(img) - _direction(label)).max())
                detail = f", direction cosines differ by up to {diff:.3g}"
            raise PGPSError(
                f"{path}: orientation {codes} (affine direction) does not match its label {case.label} "
                f"{label_codes}{detail}"
            )
    _check_label_values(label, case.label, declared)
    for path, img in zip(case.images, images, strict=True):
        _check_finite(img, path)


def _case_problem(case: Case, channels: int, declared: frozenset[int], four_d: bool) -> str | None:
    """check_case as a value, so a worker process can hand the message back. Anything check_case did not
    foresee still becomes one line naming the case's files (the property tests hunt for such gaps)."""
    try:
        check_case(case, channels, declared, four_d)
    except PGPSError as exc:
        return str(exc)
    except Exception as exc:
        return f"{case.images[0]}: case {case.name!r} could not be checked ({type(exc).__name__}: {squeeze(exc)})"
    return None


AUTO_POOL_BYTES = 256 << 20  # below this, starting worker processes (~1.5 s) costs more than reading serially


def _auto_workers(cases: list[Case]) -> int:
    """One process for small datasets; up to 4 when there are hundreds of MB to decompress."""
    size = sum(Path(p).stat().st_size for c in cases for p in (*c.images, c.label))
    return min(4, os.cpu_count() or 1) if size > AUTO_POOL_BYTES else 1


def check_cases(cases: list[Case], channels: int, declared: frozenset[int], four_d: bool, workers: int | None) -> None:
    """Read every case (in parallel for big datasets); report the first problem in case order, plus a count."""
    args = [(c, channels, declared, four_d) for c in cases]
    workers = _auto_workers(cases) if workers is None else workers
    problems: list[str | None] = []
    with bar("validate cases", len(cases), unit="case") as progress:
        if workers > 1 and len(cases) > 1:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                for problem in pool.map(_case_problem, *zip(*args, strict=True), chunksize=2):
                    problems.append(problem)
                    progress.update()
        else:
            for a in args:
                problems.append(_case_problem(*a))
                progress.update()
    found = [p for p in problems if p]
    if found:
        more = f" (and {len(found) - 1} more case(s) with problems)" if len(found) > 1 else ""
        raise PGPSError(found[0] + more)


def _header_only(path: str, check: Callable[[Any], None] | None = None) -> None:
    img = _load(path)
    if check:
        check(img)


# ------------------------------------------------------------------ MSD layout
def _listed_file(folder: Path, rel: Any, where: str, json_path: Path) -> str:
    """A path from dataset.json ('./imagesTr/x.nii.gz'), kept inside the task folder, that must exist."""
    if not isinstance(rel, str) or not rel.strip():
        raise PGPSError(f"{json_path}: {where} must be a relative path string, got {rel!r}")
    pure = PurePosixPath(rel)
    parts = [p for p in pure.parts if p not in ("", ".")]
    if pure.is_absolute() or ".." in parts or not parts:
        raise PGPSError(f"{json_path}: {where} {rel!r} must stay inside the task folder")
    path = folder.joinpath(*parts)
    problem = file_problem(path)
    if problem == "not found":
        raise PGPSError(f"{path}: listed in dataset.json {where} but does not exist")
    if problem:
        raise PGPSError(f"{path}: {problem} (listed in dataset.json {where})")
    return str(path)


def _nifti_files(folder: Path) -> list[str]:
    """NIfTI names in a folder the way nnU-Net's MSD converter lists them (no '.'/'_' hidden or resource forks)."""
    if dir_problem(folder) == "not found":
        return []
    return sorted(n for n in list_dir(folder) if n.endswith(".nii.gz") and not n.startswith((".", "_")))


def _msd_labels(labels: Any, path: Path) -> frozenset[int]:
    if not isinstance(labels, dict) or not labels:
        raise PGPSError(f"{path}: 'labels' must be a non-empty object {{'0': 'background', '1': ...}}")
    try:
        values = frozenset(int(k) for k in labels)
    except ValueError:
        raise PGPSError(f"{path}: 'labels' keys must be label values ('0', '1', ...), got {sorted(labels)}") from None
    if 0 not in values:
        raise PGPSError(f"{path}: 'labels' must declare 0 (background)")
    return values


def check_msd_task(folder: Path | str, workers: int | None = None) -> str:
    """Validate an MSD-layout task; returns a one-line summary. Raises PGPSError on the first problem."""
    folder = Path(folder)
    data = load_dataset_json(folder)
    jpath = folder / "dataset.json"
    _require_keys(data, ["modality", "labels", "training", "test"], jpath)
    channels = _channel_count(data["modality"], "modality", jpath)
    declared = _msd_labels(data["labels"], jpath)
    training, test = data["training"], data["test"]
    if not isinstance(training, list):
        raise PGPSError(f"{jpath}: 'training' must be a list of {{'image': ..., 'label': ...}}")
    if not isinstance(test, list):
        raise PGPSError(f"{jpath}: 'test' must be a list of image paths")
    if not training:
        raise PGPSError(f"{jpath}: empty training set ('training' lists no cases)")
    if "numTraining" in data and data["numTraining"] != len(training):
        raise PGPSError(f"{jpath}: 'numTraining' is {data['numTraining']!r} but 'training' lists {len(training)} cases")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        problem = dir_problem(folder / sub)
        if problem == "not found":
            raise PGPSError(f"{folder / sub}: missing folder (nnU-Net's MSD converter needs it, even if empty)")
        if problem:
            raise PGPSError(f"{folder / sub}: {problem}")

    cases: list[Case] = []
    for i, entry in enumerate(training):
        where = f"'training'[{i}]"
        if not isinstance(entry, dict) or "image" not in entry:
            raise PGPSError(f"{jpath}: {where} must be an object with 'image' and 'label', got {entry!r}")
        if "label" not in entry:
            raise PGPSError(f"{jpath}: {where} image {entry['image']!r} has no 'label' (an image without label)")
        image = _listed_file(folder, entry["image"], f"{where} 'image'", jpath)
        label = _listed_file(folder, entry["label"], f"{where} 'label'", jpath)
        cases.append(Case(Path(image).name, (image,), label))

    listed = {Path(c.images[0]).name for c in cases}
    labelled = set(_nifti_files(folder / "labelsTr"))
    for name in _nifti_files(folder / "imagesTr"):
        if name not in labelled:
            raise PGPSError(f"{folder / 'imagesTr' / name}: image without label (no labelsTr/{name})")
        if name not in listed:
            raise PGPSError(f"{folder / 'imagesTr' / name}: not listed in dataset.json 'training'")
    images = set(_nifti_files(folder / "imagesTr"))
    orphans = sorted(labelled - images)
    if orphans:
        raise PGPSError(f"{folder / 'labelsTr' / orphans[0]}: label without image (no imagesTr/{orphans[0]})")

    for i, rel in enumerate(test):
        path = _listed_file(folder, rel, f"'test'[{i}]", jpath)

        def channels_match(img: Any, path: str = path) -> None:
            got = img.shape[3] if len(img.shape) == 4 else 1
            if got != channels:
                raise PGPSError(f"{path}: holds {got} channel(s) but dataset.json 'modality' declares {channels}")

        _header_only(path, channels_match)
    check_cases(cases, channels, declared, four_d=True, workers=workers)
    return (
        f"{folder}: OK (MSD task, {len(cases)} training case(s), {channels} channel(s), {len(test)} test image(s), "
        f"labels {sorted(declared)})"
    )


# ------------------------------------------------------------------ nnU-Net v2 raw layout
def _nnunet_labels(data: dict[str, Any], path: Path) -> frozenset[int]:
    labels = data["labels"]
    if not isinstance(labels, dict) or not labels:
        raise PGPSError(f"{path}: 'labels' must be a non-empty object {{'background': 0, 'organ': 1, ...}}")
    values: set[int] = set()
    regions = False
    for name, value in labels.items():
        items = value if isinstance(value, list) else [value]
        regions |= isinstance(value, list)
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in items):
            raise PGPSError(f"{path}: 'labels'[{name!r}] must be a non-negative integer (or a list for regions)")
        values.update(items)
    if labels.get("background") != 0:
        raise PGPSError(f"{path}: 'labels' must map 'background' to 0")
    if regions and "regions_class_order" not in data:
        raise PGPSError(f"{path}: region labels (lists) need 'regions_class_order'")
    ignore = labels.get("ignore")
    plain = sorted(values - ({ignore} if isinstance(ignore, int) else set()))
    if plain != list(range(len(plain))):
        raise PGPSError(f"{path}: 'labels' values must be consecutive 0, 1, 2, ... (nnU-Net's rule), got {plain}")
    return frozenset(values)


_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def _nnunet_cases_from_folders(folder: Path, ending: str, channels: int) -> list[Case]:
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    for sub in (images_dir, labels_dir):
        problem = dir_problem(sub)
        if problem:
            raise PGPSError(f"{sub}: {'missing folder' if problem == 'not found' else problem}")
    by_case: dict[str, set[int]] = {}
    for name in sorted(list_dir(images_dir)):
        if not name.endswith(ending):
            continue
        if name.startswith("."):
            raise PGPSError(
                f"{images_dir / name}: hidden/resource-fork file; nnU-Net would read it as a case, delete it"
            )
        m = _CHANNEL_RE.match(name[: -len(ending)])
        if not m:
            raise PGPSError(f"{images_dir / name}: name must end in _XXXX{ending} (the 4-digit channel index)")
        by_case.setdefault(m["case"], set()).add(int(m["ch"]))
    if not by_case:
        raise PGPSError(f"{images_dir}: empty training set (no <case>_0000{ending} files)")
    cases: list[Case] = []
    for case, found in sorted(by_case.items()):
        for ch in range(channels):
            if ch not in found:
                path = images_dir / f"{case}_{ch:04d}{ending}"
                raise PGPSError(f"{path}: missing (case {case!r} needs {channels} channel(s) per 'channel_names')")
        extra = sorted(found - set(range(channels)))
        if extra:
            path = images_dir / f"{case}_{extra[0]:04d}{ending}"
            raise PGPSError(f"{path}: channel {extra[0]} but dataset.json 'channel_names' declares {channels}")
        label = labels_dir / f"{case}{ending}"
        first = images_dir / f"{case}_0000{ending}"
        problem = file_problem(label)
        if problem == "not found" and not label.is_symlink():
            raise PGPSError(f"{first}: image without label (no labelsTr/{label.name})")
        if problem:
            raise PGPSError(f"{label}: {problem}")
        images = tuple(str(images_dir / f"{case}_{ch:04d}{ending}") for ch in range(channels))
        for image in images:
            require_file(image)
        cases.append(Case(case, images, str(label)))
    for name in sorted(list_dir(labels_dir)):
        if name.endswith(ending) and name[: -len(ending)] not in by_case:
            raise PGPSError(
                f"{labels_dir / name}: label without image (no imagesTr/{name[: -len(ending)]}_0000{ending})"
            )
    return cases


def _nnunet_cases_from_json(folder: Path, dataset: Any, channels: int, jpath: Path) -> list[Case]:
    """nnU-Net's optional explicit 'dataset' listing: {case: {'images': [...], 'label': ...}}, relative paths."""
    if not isinstance(dataset, dict):
        raise PGPSError(f"{jpath}: 'dataset' must map case names to {{'images': [...], 'label': ...}}")
    cases: list[Case] = []
    for name, entry in dataset.items():
        where = f"'dataset'[{name!r}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), list) or "label" not in entry:
            raise PGPSError(f"{jpath}: {where} needs 'images' (a list) and 'label'")
        if len(entry["images"]) != channels:
            raise PGPSError(
                f"{jpath}: {where} lists {len(entry['images'])} image(s), 'channel_names' declares {channels}"
            )
        paths = []
        for rel in [*entry["images"], entry["label"]]:
            path = Path(os.path.expandvars(os.path.expanduser(str(rel))))
            path = path if path.is_absolute() else folder / path
            problem = file_problem(path)
            if problem == "not found":
                raise PGPSError(f"{path}: listed in dataset.json {where} but does not exist")
            if problem:
                raise PGPSError(f"{path}: {problem} (listed in dataset.json {where})")
            paths.append(str(path))
        cases.append(Case(name, tuple(paths[:-1]), paths[-1]))
    if not cases:
        raise PGPSError(f"{jpath}: empty training set ('dataset' lists no cases)")
    return cases


def check_nnunet_raw(folder: Path | str, workers: int | None = None) -> str:
    """Validate an nnU-Net v2 raw dataset; returns a one-line summary. Raises PGPSError on the first problem."""
    folder = Path(folder)
    data = load_dataset_json(folder)
    jpath = folder / "dataset.json"
    if "channel_names" not in data and "modality" in data:  # nnU-Net still accepts the MSD name
        data = {**data, "channel_names": data["modality"]}
    _require_keys(data, ["channel_names", "labels", "numTraining", "file_ending"], jpath)
    channels = _channel_count(data["channel_names"], "channel_names", jpath)
    declared = _nnunet_labels(data, jpath)
    ending = data["file_ending"]
    if ending not in NIFTI_ENDINGS:
        raise PGPSError(f"{jpath}: file_ending {ending!r} is not supported here (NIfTI only: .nii.gz or .nii)")
    num = data["numTraining"]
    if not isinstance(num, int) or isinstance(num, bool) or num < 0:
        raise PGPSError(f"{jpath}: 'numTraining' must be a non-negative integer, got {num!r}")
    if "dataset" in data:
        cases = _nnunet_cases_from_json(folder, data["dataset"], channels, jpath)
    else:
        cases = _nnunet_cases_from_folders(folder, ending, channels)
    if len(cases) != num:
        raise PGPSError(f"{jpath}: 'numTraining' is {num} but the dataset holds {len(cases)} training case(s)")
    check_cases(cases, channels, declared, four_d=False, workers=workers)
    return (
        f"{folder}: OK (nnU-Net raw dataset, {len(cases)} training case(s), {channels} channel(s), "
        f"labels {sorted(declared)})"
    )


# ------------------------------------------------------------------ public API and CLI
def validate_msd_task(path: Path | str, workers: int | None = None) -> None:
    """Raise PGPSError naming the file and the problem if the MSD-layout task at ``path`` is unusable."""
    check_msd_task(path, workers)


def validate_nnunet_raw(path: Path | str, workers: int | None = None) -> None:
    """Raise PGPSError naming the file and the problem if the nnU-Net raw dataset at ``path`` is unusable."""
    check_nnunet_raw(path, workers)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="task folder (MSD layout) or nnU-Net raw dataset folder")
    parser.add_argument(
        "--layout",
        choices=("auto", "msd", "nnunet"),
        default="auto",
        help="which layout to check (default: detect from dataset.json)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes reading images (default: 1, or min(4, CPUs) above 256 MB of images)",
    )


@user_errors
def main(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise PGPSError(f"--workers must be >= 1, got {args.workers}")
    layout = detect_layout(args.path) if args.layout == "auto" else args.layout
    check = check_msd_task if layout == "msd" else check_nnunet_raw
    print(check(args.path, args.workers))
    return 0
