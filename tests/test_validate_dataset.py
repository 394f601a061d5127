"""`pgps validate-dataset`: every bad input gives exit 2 and one line naming the file and the problem, and the
dataset folder is left byte- and mtime-identical. Tiny NIfTI files built with nibabel; ~15 s in total
(the nnU-Net converter round trip and the worker-pool case start processes)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dataset_builders import SHAPE, image_array, label_array, make_msd, make_nnunet, snapshot, write_nifti
from pgps.cli import main as cli
from pgps.data.validate import detect_layout, validate_msd_task, validate_nnunet_raw

PGPS = [sys.executable, "-m", "pgps.cli"]


# ------------------------------------------------------------------ helpers
def edit_json(folder: Path, change: Callable[[dict], None]) -> None:
    data = json.loads((folder / "dataset.json").read_text())
    change(data)
    (folder / "dataset.json").write_text(json.dumps(data))


def expect_error(capsys: pytest.CaptureFixture[str], folder: Path, file: Path, problem: str, *extra: str) -> str:
    """Run the CLI; exit 2, exactly one stderr line 'pgps validate-dataset: error: <file>: ...<problem>...'."""
    before = snapshot(folder) if folder.exists() else {}
    rc = cli(["validate-dataset", str(folder), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"pgps validate-dataset: error: {file}: "), lines[0]
    assert problem in lines[0], lines[0]
    assert (snapshot(folder) if folder.exists() else {}) == before, "validation wrote into the dataset folder"
    return lines[0]


# ------------------------------------------------------------------ good datasets pass, and are not touched
def test_msd_task_passes_and_folder_is_untouched(tmp_path, capsys):
    task = make_msd(tmp_path)
    before = snapshot(task)
    assert cli(["validate-dataset", str(task)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"{task}: OK (MSD task, 3 training case(s), 1 channel(s), 1 test image(s), labels [0, 1, 2])"
    assert snapshot(task) == before
    assert detect_layout(task) == "msd"


def test_4d_multichannel_msd_task_passes(tmp_path, capsys):
    task = make_msd(tmp_path, "Task01_BrainTumour", channels=4)
    assert nib.load(task / "imagesTr" / "case_000.nii.gz").shape == (*SHAPE, 4)
    assert cli(["validate-dataset", str(task)]) == 0
    assert "4 channel(s)" in capsys.readouterr().out
    validate_msd_task(task)


def test_nnunet_raw_dataset_passes(tmp_path, capsys):
    ds = make_nnunet(tmp_path)
    before = snapshot(ds)
    assert cli(["validate-dataset", str(ds)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"{ds}: OK (nnU-Net raw dataset, 3 training case(s), 2 channel(s), labels [0, 1, 2])"
    )
    assert snapshot(ds) == before
    validate_nnunet_raw(ds)


def test_nnunets_own_msd_conversion_passes_both_checks(tmp_path):
    """nnU-Net's real converter splits our 4D MSD task into _0000/_0001 files; both layouts validate."""
    task = make_msd(tmp_path / "msd", "Task05_Prostate", channels=2)
    (task / "imagesTr" / "._case_000.nii.gz").unlink()  # nnU-Net's converter does not skip these itself
    raw = tmp_path / "nnUNet_raw"
    env = {
        **os.environ,
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(tmp_path / "pp"),
        "nnUNet_results": str(tmp_path / "res"),
    }
    conv = subprocess.run(
        [str(Path(sys.executable).parent / "nnUNetv2_convert_MSD_dataset"), "-i", str(task), "-np", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert conv.returncode == 0, conv.stderr
    ds = raw / "Dataset005_Prostate"
    assert sorted(p.name for p in (ds / "imagesTr").iterdir())[:2] == ["case_000_0000.nii.gz", "case_000_0001.nii.gz"]
    assert detect_layout(ds) == "nnunet"
    validate_nnunet_raw(ds)
    validate_msd_task(task)


def test_explicit_dataset_listing_is_followed(tmp_path, capsys):
    ds = make_nnunet(tmp_path, channels=1)
    (ds / "labelsTr").rename(ds / "segs")
    edit_json(
        ds,
        lambda d: d.update(
            dataset={
                f"case_{i:03d}": {
                    "images": [f"imagesTr/case_{i:03d}_0000.nii.gz"],
                    "label": f"segs/case_{i:03d}.nii.gz",
                }
                for i in range(3)
            }
        ),
    )
    assert cli(["validate-dataset", str(ds)]) == 0
    (ds / "segs" / "case_002.nii.gz").unlink()
    expect_error(capsys, ds, ds / "segs" / "case_002.nii.gz", "listed in dataset.json 'dataset'['case_002']")


def test_whole_process_exit_code_and_one_line(tmp_path):
    task = make_msd(tmp_path)
    ok = subprocess.run([*PGPS, "validate-dataset", str(task)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith(f"{task}: OK"), ok.stderr
    write_nifti(task / "labelsTr" / "case_001.nii.gz", label_array(np.random.default_rng(0), top=4))
    bad = subprocess.run([*PGPS, "validate-dataset", str(task)], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        f"pgps validate-dataset: error: {task / 'labelsTr' / 'case_001.nii.gz'}: label value(s) [3, 4] not declared "
        "in dataset.json 'labels' (declared: [0, 1, 2])"
    )
    assert "Traceback" not in bad.stderr


def test_worker_pool_reports_first_bad_case_and_count(tmp_path, capsys):
    task = make_msd(tmp_path, cases=8)
    for i in (5, 7):
        write_nifti(task / "imagesTr" / f"case_{i:03d}.nii.gz", np.full(SHAPE, np.nan, dtype=np.float32))
    line = expect_error(
        capsys,
        task,
        task / "imagesTr" / "case_005.nii.gz",
        f"{int(np.prod(SHAPE))} NaN and 0 Inf voxel value(s)",
        "--workers",
        "2",
    )
    assert line.endswith("(and 1 more case(s) with problems)")


# ------------------------------------------------------------------ shared: dataset.json itself
@pytest.mark.parametrize("maker", [make_msd, make_nnunet], ids=["msd", "nnunet"])
def test_missing_dataset_json(tmp_path, capsys, maker):
    folder = maker(tmp_path)
    (folder / "dataset.json").unlink()
    expect_error(capsys, folder, folder / "dataset.json", "missing (every dataset needs a dataset.json)")


@pytest.mark.parametrize("maker", [make_msd, make_nnunet], ids=["msd", "nnunet"])
def test_unparsable_dataset_json(tmp_path, capsys, maker):
    folder = maker(tmp_path)
    (folder / "dataset.json").write_text('{"labels": {"0": "background",}')
    expect_error(capsys, folder, folder / "dataset.json", "not valid JSON (Expecting property name enclosed in")


def test_dataset_json_not_an_object(tmp_path, capsys):
    task = make_msd(tmp_path)
    (task / "dataset.json").write_text("[1, 2]")
    expect_error(capsys, task, task / "dataset.json", "top level must be a JSON object, got list")


def test_path_that_is_not_a_folder(tmp_path, capsys):
    missing = tmp_path / "Task09_Nothing"
    rc = cli(["validate-dataset", str(missing)])
    assert rc == 2 and capsys.readouterr().err.strip() == f"pgps validate-dataset: error: {missing}: not a directory"


# ------------------------------------------------------------------ MSD layout: every bad input
@pytest.mark.parametrize("key", ["modality", "labels", "training", "test"])
def test_msd_missing_required_key(tmp_path, capsys, key):
    task = make_msd(tmp_path)
    edit_json(task, lambda d: d.pop(key))
    expect_error(capsys, task, task / "dataset.json", f"missing required key(s) '{key}'")


def test_msd_empty_training_set(tmp_path, capsys):
    task = make_msd(tmp_path)
    edit_json(task, lambda d: d.update(training=[], numTraining=0))
    expect_error(capsys, task, task / "dataset.json", "empty training set ('training' lists no cases)")


def test_msd_num_training_disagrees(tmp_path, capsys):
    task = make_msd(tmp_path)
    edit_json(task, lambda d: d.update(numTraining=4))
    expect_error(capsys, task, task / "dataset.json", "'numTraining' is 4 but 'training' lists 3 cases")


@pytest.mark.parametrize("kind", ["image", "label"])
def test_msd_listed_file_does_not_exist(tmp_path, capsys, kind):
    task = make_msd(tmp_path)
    target = task / f"{kind}sTr" / "case_001.nii.gz"
    target.unlink()
    expect_error(capsys, task, target, f"listed in dataset.json 'training'[1] '{kind}' but does not exist")


def test_msd_listed_test_image_does_not_exist(tmp_path, capsys):
    task = make_msd(tmp_path)
    (task / "imagesTs" / "case_900.nii.gz").unlink()
    expect_error(capsys, task, task / "imagesTs" / "case_900.nii.gz", "listed in dataset.json 'test'[0]")


def test_msd_image_without_label_on_disk(tmp_path, capsys):
    task = make_msd(tmp_path)
    write_nifti(task / "imagesTr" / "case_050.nii.gz", image_array(np.random.default_rng(0), SHAPE))
    expect_error(capsys, task, task / "imagesTr" / "case_050.nii.gz", "image without label (no labelsTr/case_050")


def test_msd_training_entry_without_label(tmp_path, capsys):
    task = make_msd(tmp_path)
    edit_json(task, lambda d: d["training"][2].pop("label"))
    expect_error(capsys, task, task / "dataset.json", "'training'[2] image './imagesTr/case_002.nii.gz' has no 'label'")


def test_msd_label_without_image(tmp_path, capsys):
    task = make_msd(tmp_path)
    write_nifti(task / "labelsTr" / "case_060.nii.gz", label_array(np.random.default_rng(0)))
    expect_error(capsys, task, task / "labelsTr" / "case_060.nii.gz", "label without image")


def test_msd_unlisted_training_image(tmp_path, capsys):
    task = make_msd(tmp_path)
    rng = np.random.default_rng(0)
    write_nifti(task / "imagesTr" / "case_070.nii.gz", image_array(rng, SHAPE))
    write_nifti(task / "labelsTr" / "case_070.nii.gz", label_array(rng))
    expect_error(capsys, task, task / "imagesTr" / "case_070.nii.gz", "not listed in dataset.json 'training'")


def test_msd_listed_path_escaping_the_task(tmp_path, capsys):
    task = make_msd(tmp_path)
    edit_json(task, lambda d: d["training"][0].update(image="../../etc/passwd"))
    expect_error(capsys, task, task / "dataset.json", "'training'[0] 'image' '../../etc/passwd' must stay inside")


def test_msd_labels_without_background(tmp_path, capsys):
    task = make_msd(tmp_path)
    edit_json(task, lambda d: d.update(labels={"1": "organ", "2": "lesion"}))
    expect_error(capsys, task, task / "dataset.json", "'labels' must declare 0 (background)")


def test_msd_wrong_channel_count(tmp_path, capsys):
    task = make_msd(tmp_path, "Task01_BrainTumour", channels=4)
    write_nifti(task / "imagesTr" / "case_001.nii.gz", image_array(np.random.default_rng(0), (*SHAPE, 3)))
    expect_error(
        capsys,
        task,
        task / "imagesTr" / "case_001.nii.gz",
        "shape (6, 7, 8, 3) holds 3 channel(s) but dataset.json 'modality' declares 4",
    )


# ------------------------------------------------------------------ per-case checks, both layouts
def _files(folder: Path, layout: str, case: int = 1) -> tuple[Path, Path]:
    if layout == "msd":
        return folder / "imagesTr" / f"case_{case:03d}.nii.gz", folder / "labelsTr" / f"case_{case:03d}.nii.gz"
    return folder / "imagesTr" / f"case_{case:03d}_0001.nii.gz", folder / "labelsTr" / f"case_{case:03d}.nii.gz"


BUILD = {"msd": make_msd, "nnunet": make_nnunet}
LAYOUTS = pytest.mark.parametrize("layout", ["msd", "nnunet"])


@LAYOUTS
def test_shape_mismatch(tmp_path, capsys, layout):
    folder = BUILD[layout](tmp_path)
    image, label = _files(folder, layout)  # nnU-Net: channel _0001 disagrees while _0000 matches
    write_nifti(image, image_array(np.random.default_rng(0), (6, 7, 9)))
    expect_error(capsys, folder, image, f"shape (6, 7, 9) does not match its label {label} (6, 7, 8)")


@LAYOUTS
def test_spacing_mismatch(tmp_path, capsys, layout):
    folder = BUILD[layout](tmp_path)
    image, label = _files(folder, layout)
    write_nifti(image, image_array(np.random.default_rng(0), SHAPE), np.diag([1.0, 1.0, 2.5, 1.0]))
    expect_error(capsys, folder, image, f"spacing (1, 1, 2.5) does not match its label {label} (1, 1, 1)")


@LAYOUTS
def test_orientation_mismatch(tmp_path, capsys, layout):
    folder = BUILD[layout](tmp_path)
    image, label = _files(folder, layout)
    write_nifti(image, image_array(np.random.default_rng(0), SHAPE), np.diag([-1.0, 1.0, 1.0, 1.0]))  # x flipped
    expect_error(capsys, folder, image, f"orientation LAS (affine direction) does not match its label {label} RAS")


def test_small_rotation_is_an_orientation_mismatch(tmp_path, capsys):
    """10 degrees about z keeps the axis codes (RAS) but misaligns image and label."""
    task = make_msd(tmp_path)
    image, label = _files(task, "msd")
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    write_nifti(image, image_array(np.random.default_rng(0), SHAPE), rot)
    expect_error(
        capsys,
        task,
        image,
        f"orientation RAS (affine direction) does not match its label {label} RAS, direction "
        f"cosines differ by up to {s:.3g}",
    )


@LAYOUTS
def test_undeclared_label_value(tmp_path, capsys, layout):
    folder = BUILD[layout](tmp_path)
    _, label = _files(folder, layout)
    write_nifti(label, label_array(np.random.default_rng(0), top=3))
    expect_error(
        capsys, folder, label, "label value(s) [3] not declared in dataset.json 'labels' (declared: [0, 1, 2])"
    )


@LAYOUTS
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_image(tmp_path, capsys, layout, bad):
    folder = BUILD[layout](tmp_path)
    image, _ = _files(folder, layout)
    arr = image_array(np.random.default_rng(0), nib.load(image).shape)
    arr.flat[[3, 10]] = bad
    write_nifti(image, arr)
    want = "2 NaN and 0 Inf" if np.isnan(bad) else "0 NaN and 2 Inf"
    expect_error(capsys, folder, image, f"{want} voxel value(s); replace them before training")


@LAYOUTS
def test_not_a_readable_nifti(tmp_path, capsys, layout):
    folder = BUILD[layout](tmp_path)
    image, _ = _files(folder, layout)
    image.write_bytes(b"this is not a NIfTI file at all")
    expect_error(capsys, folder, image, "not a readable NIfTI (")


@LAYOUTS
def test_truncated_nifti_data(tmp_path, capsys, layout):
    """The header still parses; the voxels stop early, as after an interrupted copy."""
    folder = BUILD[layout](tmp_path)
    _, label = _files(folder, layout)
    raw = gzip.decompress(label.read_bytes())
    label.write_bytes(gzip.compress(raw[: 352 + 10]))
    expect_error(
        capsys, folder, label, "header claims (6, 7, 8) voxels of uint8 (336 bytes) but the file decompresses to 10"
    )


# ------------------------------------------------------------------ nnU-Net raw layout: every bad input
@pytest.mark.parametrize("key", ["channel_names", "labels", "numTraining", "file_ending"])
def test_nnunet_missing_required_key(tmp_path, capsys, key):
    ds = make_nnunet(tmp_path)
    edit_json(ds, lambda d: d.pop(key))
    expect_error(capsys, ds, ds / "dataset.json", f"missing required key(s) '{key}'", "--layout", "nnunet")


def test_nnunet_empty_training_set(tmp_path, capsys):
    ds = make_nnunet(tmp_path)
    for p in (ds / "imagesTr").iterdir():
        p.unlink()
    for p in (ds / "labelsTr").iterdir():
        p.unlink()
    expect_error(capsys, ds, ds / "imagesTr", "empty training set (no <case>_0000.nii.gz files)")


def test_nnunet_num_training_disagrees(tmp_path, capsys):
    ds = make_nnunet(tmp_path)
    edit_json(ds, lambda d: d.update(numTraining=5))
    expect_error(capsys, ds, ds / "dataset.json", "'numTraining' is 5 but the dataset holds 3 training case(s)")


def test_nnunet_missing_channel_file(tmp_path, capsys):
    ds = make_nnunet(tmp_path)
    (ds / "imagesTr" / "case_002_0001.nii.gz").unlink()
    expect_error(
        capsys,
        ds,
        ds / "imagesTr" / "case_002_0001.nii.gz",
        "missing (case 'case_002' needs 2 channel(s) per 'channel_names')",
    )


def test_nnunet_image_without_label(tmp_path, capsys):
    ds = make_nnunet(tmp_path)
    (ds / "labelsTr" / "case_001.nii.gz").unlink()
    expect_error(capsys, ds, ds / "imagesTr" / "case_001_0000.nii.gz", "image without label (no labelsTr/case_001")


def test_nnunet_label_without_image(tmp_path, capsys):
    ds = make_nnunet(tmp_path)
    shutil.copy(ds / "labelsTr" / "case_001.nii.gz", ds / "labelsTr" / "case_077.nii.gz")
    expect_error(capsys, ds, ds / "labelsTr" / "case_077.nii.gz", "label without image")


def test_nnunet_resource_fork_file_is_flagged(tmp_path, capsys):
    ds = make_nnunet(tmp_path)
    (ds / "imagesTr" / "._case_000_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    expect_error(capsys, ds, ds / "imagesTr" / "._case_000_0000.nii.gz", "nnU-Net would read it as a case")


def test_nnunet_file_without_channel_suffix(tmp_path, capsys):
    ds = make_nnunet(tmp_path)
    (ds / "imagesTr" / "case_000_0001.nii.gz").rename(ds / "imagesTr" / "case_000.nii.gz")
    expect_error(capsys, ds, ds / "imagesTr" / "case_000.nii.gz", "name must end in _XXXX.nii.gz")


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        (
            {"background": 0, "organ": 1, "lesion": 3},
            "must be consecutive 0, 1, 2, ... (nnU-Net's rule), got [0, 1, 3]",
        ),
        ({"organ": 1, "lesion": 2}, "'labels' must map 'background' to 0"),
        ({"background": 0, "organ": "one"}, "'labels'['organ'] must be a non-negative integer"),
        ({"background": 0, "whole": [1, 2], "core": [2]}, "region labels (lists) need 'regions_class_order'"),
    ],
    ids=["gap", "no-background", "not-int", "regions"],
)
def test_nnunet_bad_label_declarations(tmp_path, capsys, labels, problem):
    ds = make_nnunet(tmp_path)
    edit_json(ds, lambda d: d.update(labels=labels))
    expect_error(capsys, ds, ds / "dataset.json", problem)


def test_nnunet_unsupported_file_ending(tmp_path, capsys):
    ds = make_nnunet(tmp_path)
    edit_json(ds, lambda d: d.update(file_ending=".png"))
    expect_error(capsys, ds, ds / "dataset.json", "file_ending '.png' is not supported here (NIfTI only")


def test_nnunet_channel_must_be_3d(tmp_path, capsys):
    ds = make_nnunet(tmp_path)
    image = ds / "imagesTr" / "case_000_0000.nii.gz"
    write_nifti(image, image_array(np.random.default_rng(0), (*SHAPE, 2)))
    expect_error(capsys, ds, image, "image must be 3D (one file per channel), got shape (6, 7, 8, 2)")


def test_layout_cannot_be_told(tmp_path, capsys):
    folder = tmp_path / "mystery"
    folder.mkdir()
    (folder / "dataset.json").write_text('{"labels": {"0": "background"}}')
    expect_error(capsys, folder, folder / "dataset.json", "cannot tell an MSD task")


def test_bad_workers_value(tmp_path, capsys):
    task = make_msd(tmp_path)
    assert cli(["validate-dataset", str(task), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "pgps validate-dataset: error: --workers must be >= 1, got 0"


def test_api_raises_pgps_error(tmp_path):
    from pgps.errors import PGPSError

    task = make_msd(tmp_path)
    (task / "imagesTr" / "case_000.nii.gz").write_bytes(b"junk")
    with pytest.raises(PGPSError, match=r"case_000\.nii\.gz: not a readable NIfTI"):
        validate_msd_task(task)
    with pytest.raises(PGPSError, match="missing required key"):
        validate_nnunet_raw(task)
