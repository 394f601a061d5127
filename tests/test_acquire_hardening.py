"""`pgps acquire` under hostile or unlucky conditions: a user's tarball is only ever read (even when a run is
SIGKILLed mid-checksum), tarballs that clash, explode or hold nothing are refused with one line, and progress bars
appear on a terminal only. Real processes, a real HTTP server on 127.0.0.1, real signals; ~30 s."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msd_server import TASK, build_task_tar, md5, serve
from pgps.cli import main as cli
from pgps.data.extract import Limits, extract
from pgps.errors import PGPSError

PGPS = [sys.executable, "-m", "pgps.cli"]


def _acquire(tmp: Path, *extra: str) -> list[str]:
    return ["acquire", TASK, "--data", str(tmp / "data"), *extra]


def _file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _one_error_line(err: str) -> str:
    """The error line; asserts it is the only line that is not progress chatter and there is no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert err.rstrip().endswith(errors[0]), err  # nothing after it (a multi-line message would continue)
    return errors[0]


# ---------------------------------------------------------------- the user's tarball is never written
@pytest.mark.parametrize("honour_range", [False, True], ids=["server-ignores-range", "server-resumes"])
def test_users_tarball_survives_kill_during_md5_then_plain_download(tmp_path, honour_range):
    """--source-dir run SIGKILLed while hashing the user's (large) tarball, then a plain `pgps acquire`: the
    download must not write into the name that shared the user's file. Synchronised on the link appearing."""
    tar, _ = build_task_tar()
    mine = tmp_path / "mine" / f"{TASK}.tar"
    mine.parent.mkdir()
    with open(mine, "wb") as fh:  # 256 MiB, mostly a hole: hashing it takes a second or more
        fh.write(os.urandom(1 << 16))
        fh.truncate(256 << 20)
    before = _file_md5(mine)
    log = tmp_path / "killed.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*PGPS, *_acquire(tmp_path, "--source-dir", str(mine.parent), "--md5", "0" * 32)], stderr=err
        )
        try:
            deadline = time.monotonic() + 60
            while os.stat(mine).st_nlink < 2:  # acquire linked the user's file into data/downloads
                assert proc.poll() is None, f"exited before linking: {log.read_text()}"
                assert time.monotonic() < deadline, "the link never appeared"
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, f"finished before the kill (MD5 too fast?): {log.read_text()}"
    assert os.stat(mine).st_nlink == 2, "killed with our name still linked to the user's file"

    with serve({f"{TASK}.tar": tar}) as (url, behaviour):
        behaviour.honour_range = honour_range
        done = subprocess.run([*PGPS, *_acquire(tmp_path, "--url-base", url, "--md5", md5(tar))], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert os.stat(mine).st_size == 256 << 20 and _file_md5(mine) == before, "the user's tarball was written"
    assert os.stat(mine).st_nlink == 1, "a name in data/downloads still points at the user's file"
    downloads = tmp_path / "data" / "downloads"
    assert (downloads / f"{TASK}.tar").read_bytes() == tar
    assert sorted(p.name for p in downloads.iterdir()) == [f".{TASK}.lock", f"{TASK}.tar"]


@pytest.mark.parametrize("link", ["hardlink", "symlink"])
@pytest.mark.parametrize("honour_range", [False, True], ids=["server-ignores-range", "server-resumes"])
def test_part_file_linked_to_a_users_file_is_unlinked_not_written(tmp_path, capsys, link, honour_range):
    """A .part left by an older version as a link to the user's own (smaller, different) tarball."""
    tar, _ = build_task_tar()
    mine = tmp_path / "mine.tar"
    mine.write_bytes(b"my own tarball " * 100)
    downloads = tmp_path / "data" / "downloads"
    downloads.mkdir(parents=True)
    part = downloads / f"{TASK}.tar.part"
    os.link(mine, part) if link == "hardlink" else part.symlink_to(mine)
    with serve({f"{TASK}.tar": tar}) as (url, behaviour):
        behaviour.honour_range = honour_range
        assert cli(_acquire(tmp_path, "--url-base", url, "--md5", md5(tar))) == 0
        assert [r["range"] for r in behaviour.requests] == [None], "resumed into a file that is not ours"
    assert mine.read_bytes() == b"my own tarball " * 100
    assert (downloads / f"{TASK}.tar").read_bytes() == tar
    assert "not writing through it" in capsys.readouterr().err


def test_source_dir_run_never_names_the_users_file_part(tmp_path):
    """After a successful --source-dir run the tarball is a second name of the user's file, and nothing in
    data/downloads is a .part (the only name a later download would write to)."""
    tar, _ = build_task_tar()
    src = tmp_path / "mine"
    src.mkdir()
    (src / f"{TASK}.tar").write_bytes(tar)
    assert cli(_acquire(tmp_path, "--source-dir", str(src), "--md5", md5(tar))) == 0
    downloads = tmp_path / "data" / "downloads"
    assert sorted(p.name for p in downloads.iterdir()) == [f".{TASK}.lock", f"{TASK}.tar"]
    assert os.stat(downloads / f"{TASK}.tar").st_ino == os.stat(src / f"{TASK}.tar").st_ino


@pytest.fixture
def other_disk() -> Iterator[Path]:
    """A folder on another filesystem than pytest's tmp_path (tmpfs), where hard links cannot reach."""
    base = Path("/dev/shm")
    if not base.is_dir():
        pytest.skip("no /dev/shm here")
    folder = Path(tempfile.mkdtemp(prefix="pgps-other-disk-", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def test_source_on_another_disk_is_copied_verified_and_left_alone(tmp_path, capsys, other_disk):
    if os.stat(other_disk).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as tmp_path here")
    tar, _ = build_task_tar()
    mine = other_disk / f"{TASK}.tar"
    mine.write_bytes(tar)
    assert cli(_acquire(tmp_path, "--source-dir", str(other_disk), "--md5", md5(tar))) == 0
    tarball = tmp_path / "data" / "downloads" / f"{TASK}.tar"
    assert tarball.read_bytes() == tar and os.stat(tarball).st_nlink == 1  # a copy, not a link
    assert mine.read_bytes() == tar and os.stat(mine).st_nlink == 1
    mine.write_bytes(tar[:-10] + b"0123456789")  # a damaged source: the copy is refused, the source kept
    shutil.rmtree(tmp_path / "data")
    assert cli(_acquire(tmp_path, "--source-dir", str(other_disk), "--md5", md5(tar))) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"pgps acquire: error: {mine}: MD5 mismatch")
    assert mine.read_bytes() == tar[:-10] + b"0123456789"
    assert sorted(p.name for p in (tmp_path / "data" / "downloads").iterdir()) == [f".{TASK}.lock"]


@pytest.mark.timeout(60)  # hashing a FIFO would block forever
@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_placed_tarball_that_is_not_a_regular_file(tmp_path, capsys, kind):
    downloads = tmp_path / "data" / "downloads"
    downloads.mkdir(parents=True)
    placed = downloads / f"{TASK}.tar"
    os.mkfifo(placed) if kind == "fifo" else placed.mkdir()
    assert cli(_acquire(tmp_path, "--md5", "0" * 32, "--url-base", "http://127.0.0.1:9")) == 2
    want = "is a FIFO (named pipe), not a regular file" if kind == "fifo" else "is a folder, not a file"
    assert capsys.readouterr().err.strip() == (
        f"pgps acquire: error: {placed}: {want}; replace it with the task's tarball, or delete it to download"
    )


# ---------------------------------------------------------------- archives that must be refused
def _tar_entries(entries: list[tuple[str, bytes | None]], compress: bool = False) -> bytes:
    """A tar with members in this exact order; data None makes a folder."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if compress else "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _run_source(tmp_path: Path, capsys: pytest.CaptureFixture[str], tar: bytes, *extra: str) -> tuple[int, str]:
    """`pgps acquire --source-dir` in this process (an uncaught exception would fail the test as a traceback)."""
    src = tmp_path / "mine"
    src.mkdir(exist_ok=True)
    (src / f"{TASK}.tar").write_bytes(tar)
    rc = cli(_acquire(tmp_path, "--source-dir", str(src), "--md5", md5(tar), *extra))
    return rc, capsys.readouterr().err


def _raw_listing(tmp_path: Path) -> list[str]:
    raw = tmp_path / "data" / "raw"
    return sorted(p.name for p in raw.iterdir()) if raw.exists() else []


DJ = (f"{TASK}/dataset.json", b"{}")


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([DJ, (f"{TASK}/a", b"1"), (f"{TASK}/a", None)], "'Task04_Hippocampus/a' is a folder where the archive"),
        ([DJ, (f"{TASK}/a", None), (f"{TASK}/a", b"1")], "'Task04_Hippocampus/a' is a file where the archive"),
        ([DJ, (f"{TASK}/a", b"1"), (f"{TASK}/a/b", b"2")], "lies inside 'a', which the archive also holds as a file"),
        ([DJ, (f"{TASK}/a/b", b"2"), (f"{TASK}/a", b"1")], "'Task04_Hippocampus/a' is a file where the archive"),
        ([DJ, (f"{TASK}/dataset.json", b"{2}")], "'Task04_Hippocampus/dataset.json' is a duplicate member"),
    ],
    ids=["file-then-folder", "folder-then-file", "file-then-child", "child-then-file", "duplicate"],
)
def test_name_clashes_are_one_line_and_nothing_lands(tmp_path, capsys, entries, problem):
    rc, err = _run_source(tmp_path, capsys, _tar_entries(entries))
    assert rc == 2, err
    line = _one_error_line(err)
    assert line.startswith(f"pgps acquire: error: {tmp_path / 'data' / 'downloads' / f'{TASK}.tar'}: member ")
    assert problem in line and line.endswith("refusing to extract")
    assert _raw_listing(tmp_path) == []


def test_top_level_file_is_refused(tmp_path, capsys):
    rc, err = _run_source(tmp_path, capsys, _tar_entries([DJ, (TASK, b"x")]))
    assert rc == 2
    assert _one_error_line(err).endswith(f"top-level member {TASK!r} is a file, not a folder")


@pytest.mark.parametrize(
    ("tar", "problem"),
    [
        (b"", "empty file (0 bytes), not a tar archive"),
        (_tar_entries([]), "empty archive (no task folder in it)"),
        (_tar_entries([(f"{TASK}/._dataset.json", b"fork")]), "empty archive (no task folder in it)"),
        (b"\x1f\x8b" + b"\x00" * 600, "not a readable tar archive ("),
        (os.urandom(5000), "not a readable tar archive ("),
    ],
    ids=["zero-bytes", "no-members", "only-resource-forks", "broken-gzip", "garbage"],
)
def test_empty_or_unreadable_tarball_is_one_line(tmp_path, capsys, tar, problem):
    rc, err = _run_source(tmp_path, capsys, tar)
    assert rc == 2, err
    line = _one_error_line(err)
    assert line.startswith(f"pgps acquire: error: {tmp_path / 'data' / 'downloads' / f'{TASK}.tar'}: {problem}")
    assert _raw_listing(tmp_path) == []


def test_member_name_with_a_newline_stays_one_line(tmp_path, capsys):
    rc, err = _run_source(tmp_path, capsys, _tar_entries([DJ, (f"{TASK}/../evil\nname", b"x")]))
    assert rc == 2
    assert "'Task04_Hippocampus/../evil\\nname'" in _one_error_line(err)


def test_source_dir_path_with_a_newline_stays_one_line(tmp_path):
    folder = tmp_path / "odd\nfolder"
    folder.mkdir()
    proc = subprocess.run([*PGPS, *_acquire(tmp_path, "--source-dir", str(folder))], capture_output=True, text=True)
    assert proc.returncode == 2
    assert _one_error_line(proc.stderr).endswith(
        f"odd\\nfolder/{TASK}.tar: not found (--source-dir must hold {TASK}.tar)"
    )


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_source_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path, kind):
    src = tmp_path / "mine"
    src.mkdir()
    source = src / f"{TASK}.tar"
    os.mkfifo(source) if kind == "fifo" else source.mkdir()
    proc = subprocess.run(
        [*PGPS, *_acquire(tmp_path, "--source-dir", str(src), "--md5", "0" * 32)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    want = "is a FIFO (named pipe), not a regular file" if kind == "fifo" else "is a folder, not a file"
    assert _one_error_line(proc.stderr) == f"pgps acquire: error: {source}: {want} (--source-dir must hold {TASK}.tar)"


# ---------------------------------------------------------------- decompression bombs (user-supplied checksums)
def _bomb() -> bytes:
    """A gzip-compressed tarball: dataset.json and 20 MB of zeros, ~20 kB on disk (ratio ~1000)."""
    return _tar_entries([DJ, (f"{TASK}/imagesTr/zeros.nii", b"\x00" * (20 << 20))], compress=True)


def test_bomb_is_refused_with_a_user_checksum_and_the_flag_lets_it_through(tmp_path, capsys):
    bomb = _bomb()
    assert len(bomb) < 200_000
    rc, err = _run_source(tmp_path, capsys, bomb)
    assert rc == 2, err
    line = _one_error_line(err)
    tarball = tmp_path / "data" / "downloads" / f"{TASK}.tar"
    assert line.startswith(f"pgps acquire: error: {tarball}: extracting would write more than ")
    assert "(50 x the tarball's size), a decompression bomb?" in line and "raise --max-extract-ratio" in line
    assert _raw_listing(tmp_path) == []  # refused before the member was written: nothing, not even a temp folder

    rc, err = _run_source(tmp_path, capsys, bomb, "--max-extract-ratio", "5000")
    assert rc == 0, err
    assert (tmp_path / "data" / "raw" / TASK / "imagesTr" / "zeros.nii").stat().st_size == 20 << 20


def test_member_count_cap(tmp_path, capsys):
    tar, _ = build_task_tar()
    rc, err = _run_source(tmp_path, capsys, tar, "--max-members", "4")
    assert rc == 2, err
    line = _one_error_line(err)
    assert "more than 4 members, a decompression bomb?" in line and "raise --max-members" in line
    assert _raw_listing(tmp_path) == []
    assert cli(_acquire(tmp_path, "--source-dir", str(tmp_path / "mine"), "--md5", md5(tar))) == 0


@pytest.mark.parametrize("flag", [["--max-extract-ratio", "0"], ["--max-members", "0"]])
def test_bad_limit_values(tmp_path, capsys, flag):
    assert cli(_acquire(tmp_path, "--md5", "0" * 32, *flag)) == 2
    assert capsys.readouterr().err.strip().startswith(f"pgps acquire: error: {flag[0]} must be ")


# ---------------------------------------------------------------- any bytes: a result or one line, never a traceback
_VALID = _tar_entries([DJ, (f"{TASK}/imagesTr/a.nii.gz", b"abc" * 50)])


def _flipped(flips: list[tuple[int, int]]) -> bytes:
    """The valid tarball with some bytes replaced (headers, sizes, checksums, data)."""
    data = bytearray(_VALID)
    for index, value in flips:
        data[index] = value
    return bytes(data)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=4096),
        st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8).map(_flipped),
        st.binary(max_size=2048).map(gzip.compress),
    )
)
def test_random_tarball_bytes_never_raise_anything_but_one_line(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("fuzz")
    tarball = tmp / f"{TASK}.tar"
    tarball.write_bytes(data)
    raw = tmp / "raw"
    try:
        dest = extract(tarball, TASK, raw, Limits())
    except PGPSError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{tarball}: ")
        assert not raw.exists() or sorted(p.name for p in raw.iterdir()) == []
    else:
        assert (dest / "dataset.json").is_file() and sorted(p.name for p in raw.iterdir()) == [TASK]


# ---------------------------------------------------------------- progress: on a terminal, never in logs
def _run_with_stderr_on_a_pty(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd`` with stderr on a pseudo-terminal 100 columns wide; returns (exit code, what it drew)."""
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


def test_progress_bars_on_a_terminal(tmp_path):
    tar, _ = build_task_tar()
    with serve({f"{TASK}.tar": tar}) as (url, _):
        rc, drawn = _run_with_stderr_on_a_pty([*PGPS, *_acquire(tmp_path, "--url-base", url, "--md5", md5(tar))])
    assert rc == 0, drawn
    for step in (f"download {TASK}.tar.part", f"MD5 {TASK}.tar.part", f"extract {TASK}.tar"):
        assert step in drawn, drawn
    assert "100%|" in drawn and "\r" in drawn


def test_no_progress_bars_in_logs(tmp_path):
    tar, _ = build_task_tar()
    with serve({f"{TASK}.tar": tar}) as (url, _):
        proc = subprocess.run([*PGPS, *_acquire(tmp_path, "--url-base", url, "--md5", md5(tar))], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    assert "\r" not in err and "%|" not in err and "\x1b" not in err
    assert err.splitlines() == [
        f"downloading {url}/{TASK}.tar -> {tmp_path / 'data' / 'downloads' / f'{TASK}.tar.part'}",
        f"{tmp_path / 'data' / 'downloads' / f'{TASK}.tar'}: MD5 {md5(tar)} OK; extracting",
    ]
