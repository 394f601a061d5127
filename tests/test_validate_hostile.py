"""`pgps validate-dataset` on hostile or damaged datasets: one line naming the path, never a traceback, a hang or
an allocation a header merely claims. Both layouts (MSD task, nnU-Net raw). ~40 s."""

from __future__ import annotations

import gzip
import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
import termios
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataset_builders import SHAPE, image_array, label_array, make_msd, make_nnunet, write_nifti
from pgps.cli import main as cli
from pgps.data.nifti import load, voxels
from pgps.data.validate import Case, check_case
from pgps.errors import PGPSError

PGPS = [sys.executable, "-m", "pgps.cli"]
BUILD = {"msd": make_msd, "nnunet": make_nnunet}
LAYOUTS = pytest.mark.parametrize("layout", ["msd", "nnunet"])


def _case_files(folder: Path, layout: str) -> dict[str, Path]:
    """The image and label of case 1 (for nnU-Net: its second channel file)."""
    image = "case_001.nii.gz" if layout == "msd" else "case_001_0001.nii.gz"
    return {"image": folder / "imagesTr" / image, "label": folder / "labelsTr" / "case_001.nii.gz"}


def _error_line(capsys: pytest.CaptureFixture[str], folder: Path) -> str:
    rc = cli(["validate-dataset", str(folder)])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- paths that are not readable files
KINDS: dict[str, tuple[Callable[[Path], None], str]] = {
    "broken-symlink": (lambda p: p.symlink_to(p.parent / "gone.nii.gz"), "broken symbolic link (points to "),
    "symlink-loop": (lambda p: p.symlink_to(p), "symbolic link loop"),
    "folder": (lambda p: p.mkdir(), "is a folder, not a file"),
    "fifo": (lambda p: os.mkfifo(p), "is a FIFO (named pipe), not a regular file"),
}


@pytest.mark.timeout(60)  # a FIFO opened for reading would block forever
@LAYOUTS
@pytest.mark.parametrize("which", ["image", "label"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_case_file_that_is_not_a_regular_file(tmp_path, capsys, layout, which, kind):
    folder = BUILD[layout](tmp_path)
    path = _case_files(folder, layout)[which]
    path.unlink()
    make, problem = KINDS[kind]
    make(path)
    line = _error_line(capsys, folder)
    assert line.startswith(f"pgps validate-dataset: error: {path}: {problem}"), line


@pytest.mark.timeout(60)
@LAYOUTS
@pytest.mark.parametrize("kind", list(KINDS))
def test_dataset_json_that_is_not_a_regular_file(tmp_path, capsys, layout, kind):
    folder = BUILD[layout](tmp_path)
    path = folder / "dataset.json"
    path.unlink()
    make, problem = KINDS[kind]
    make(path)
    assert _error_line(capsys, folder).startswith(f"pgps validate-dataset: error: {path}: {problem}")


@LAYOUTS
def test_images_folder_that_is_a_file(tmp_path, capsys, layout):
    folder = BUILD[layout](tmp_path)
    shutil.rmtree(folder / "imagesTr")
    (folder / "imagesTr").write_text("not a folder")
    line = _error_line(capsys, folder)
    assert line.startswith(f"pgps validate-dataset: error: {folder / 'imagesTr'}"), line
    assert "not a folder" in line or "a part of the path is a file" in line, line


AS_NOBODY = """
import os, pwd, sys
from pgps.cli import main
# Validate an intact copy first, as root: every module a run needs gets imported while the interpreter's own
# files (under /root here) are still readable. Then drop to nobody and validate the real target.
assert main(["validate-dataset", sys.argv[1]]) == 0
if os.geteuid() == 0:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
sys.exit(main(["validate-dataset", sys.argv[2]]))
"""


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A folder another user can enter (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="pgps-unreadable-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in [folder, *folder.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(folder)


@LAYOUTS
@pytest.mark.parametrize("what", ["dataset.json", "image", "label", "imagesTr", "folder"])
def test_unreadable_paths(world_tmp, layout, what):
    """chmod 000, checked by a process the permissions apply to: tests run as root here, so the process drops
    to nobody (os.setuid) after importing what it needs; as any other user the mode alone is enough."""
    intact = BUILD[layout](world_tmp / "intact")
    folder = BUILD[layout](world_tmp)
    target = {
        "dataset.json": folder / "dataset.json",
        "imagesTr": folder / "imagesTr",
        "folder": folder,
        **_case_files(folder, layout),
    }[what]
    target.chmod(0)
    proc = subprocess.run(
        [sys.executable, "-c", AS_NOBODY, str(intact), str(folder)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith(f"pgps validate-dataset: error: {target}: permission denied"), line


def test_file_name_with_a_newline_stays_one_line(tmp_path, capsys):
    ds = make_nnunet(tmp_path, channels=1)
    write_nifti(ds / "imagesTr" / "bad\nname_0000.nii.gz", image_array(np.random.default_rng(0), SHAPE))
    line = _error_line(capsys, ds)
    assert f"{ds / 'imagesTr'}/bad\\nname_0000.nii.gz: " in line


# ---------------------------------------------------------------- headers that claim more than the file holds
def _forged(shape: tuple[int, ...], dtype: type, payload: bytes) -> bytes:
    """A NIfTI file (uncompressed bytes) whose header claims ``shape`` x ``dtype`` but carries ``payload``."""
    header = nib.Nifti1Image(np.zeros((2, 2, 2), dtype), np.eye(4)).header
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    return header.binaryblock + b"\x00" * 4 + payload


BOUNDED_RUN = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a guard: a regression must not take the machine
from pgps.cli import main
rc = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # peak resident memory, kB
sys.exit(rc)
"""


def _bounded(folder: Path) -> tuple[int, str, int]:
    """Validate ``folder`` in a fresh process; (exit code, stderr, peak RSS in MB)."""
    proc = subprocess.run(
        [sys.executable, "-c", BOUNDED_RUN, "validate-dataset", str(folder)], capture_output=True, text=True
    )
    return proc.returncode, proc.stderr, int(proc.stdout.strip().splitlines()[-1]) // 1024


@pytest.mark.parametrize(
    ("shape", "payload", "problem"),
    [
        ((10000, 10000, 10000), b"\x01" * 700, "bytes), more than a "),  # 10^12 voxels in a ~1 kB file
        ((585, 585, 585), os.urandom(300_000), "bytes) but the file decompresses to 300000 bytes of voxels"),
    ],
    ids=["terabyte-claim-1kB-file", "200MB-claim-300kB-file"],
)
def test_header_claims_are_checked_before_allocating(tmp_path, shape, payload, problem):
    task = make_msd(tmp_path)
    rc, err, baseline_mb = _bounded(task)
    assert rc == 0, err
    files = _case_files(task, "msd")
    files["label"].write_bytes(gzip.compress(_forged(shape, np.uint8, payload)))
    files["image"].write_bytes(gzip.compress(_forged(shape, np.float32, b"")))
    rc, err, peak_mb = _bounded(task)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"pgps validate-dataset: error: {files['label']}: header claims {shape} voxels of uint8 (")
    assert problem in err, err
    assert peak_mb < baseline_mb + 64, f"peak {peak_mb} MB vs {baseline_mb} MB for the intact task"


def test_uncompressed_file_shorter_than_its_header_claims(tmp_path, capsys):
    ds = make_nnunet(tmp_path, channels=1)
    for path in [*ds.glob("imagesTr/*.nii.gz"), *ds.glob("labelsTr/*.nii.gz")]:
        nib.save(nib.load(path), str(path)[: -len(".gz")])
        path.unlink()
    edit = ds / "dataset.json"
    edit.write_text(edit.read_text().replace(".nii.gz", ".nii"))
    assert cli(["validate-dataset", str(ds)]) == 0
    label = ds / "labelsTr" / "case_001.nii"
    label.write_bytes(_forged((4000, 4000, 4000), np.uint8, b"\x00" * 100))
    for channel in ds.glob("imagesTr/case_001_*.nii"):
        channel.write_bytes(_forged((4000, 4000, 4000), np.float32, b""))
    capsys.readouterr()
    line = _error_line(capsys, ds)
    assert line == (
        f"pgps validate-dataset: error: {label}: header claims (4000, 4000, 4000) voxels of uint8 (64000000000 bytes) "
        "but the file holds 100 bytes after the header (truncated?)"
    )


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, ">i2", ">f8", np.complex64])
@pytest.mark.parametrize("scaling", [None, (2.5, -3.0)])
@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_bounded_reader_gives_what_nibabel_gives(tmp_path, dtype, scaling, ending):
    data = (np.random.default_rng(0).normal(size=(5, 6, 7)) * 100).astype(dtype)
    img = nib.Nifti1Image(data, np.eye(4))
    if scaling:
        img.header.set_slope_inter(*scaling)
    path = str(tmp_path / f"x{ending}")
    nib.save(img, path)
    loaded = load(path)
    ours, theirs = voxels(loaded, path), np.asarray(nib.load(path).dataobj)
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


# ---------------------------------------------------------------- any bytes: one line, never a traceback
def _valid_label_bytes() -> bytes:
    return nib.Nifti1Image(label_array(np.random.default_rng(3)), np.eye(4)).to_bytes()


_LABEL = _valid_label_bytes()


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for index, value in flips:
        out[index % len(out)] = value
    return bytes(out)


NIFTI_GZ_BYTES = st.one_of(
    st.binary(max_size=1500),  # anything at all
    st.binary(max_size=1500).map(gzip.compress),  # valid gzip, random inside
    st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), min_size=1, max_size=10).map(  # header fields
        lambda flips: gzip.compress(_flip(_LABEL, flips))
    ),
    st.integers(0, len(_LABEL)).map(lambda n: gzip.compress(_LABEL[:n])),  # truncated anywhere
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=NIFTI_GZ_BYTES, as_label=st.booleans())
def test_random_bytes_as_nifti_never_raise_anything_but_one_line(tmp_path_factory, data, as_label):
    folder = tmp_path_factory.mktemp("fuzz")
    good_image = write_nifti(folder / "image.nii.gz", image_array(np.random.default_rng(1), SHAPE))
    good_label = folder / "label.nii.gz"
    good_label.write_bytes(gzip.compress(_LABEL))
    bad = folder / ("bad_label.nii.gz" if as_label else "bad_image.nii.gz")
    bad.write_bytes(data)
    case = Case("c", (str(good_image if as_label else bad),), str(bad if as_label else good_label))
    try:
        check_case(case, channels=1, declared=frozenset({0, 1, 2}), four_d=True)
    except PGPSError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(f"{folder}/"), message


# ---------------------------------------------------------------- progress: on a terminal, never in logs
def _stderr_on_a_pty(cmd: list[str]) -> tuple[int, str]:
    master, slave = pty.openpty()
    termios.tcsetwinsize(slave, (24, 100))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, "no output for 60 s"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        proc.wait(60)
    return proc.returncode, out.decode(errors="replace")


def test_progress_bar_on_a_terminal_only(tmp_path):
    task = make_msd(tmp_path)
    rc, drawn = _stderr_on_a_pty([*PGPS, "validate-dataset", str(task)])
    assert rc == 0, drawn
    assert "validate cases" in drawn and "100%|" in drawn and "3/3" in drawn, drawn
    logged = subprocess.run([*PGPS, "validate-dataset", str(task)], capture_output=True, text=True)
    assert logged.returncode == 0 and logged.stderr == "", logged.stderr
    assert logged.stdout.startswith(f"{task}: OK")
