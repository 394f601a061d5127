"""`pgps acquire` against a real HTTP server on 127.0.0.1 serving an MSD-layout tarball built here
(``msd_server``): resume, checksum and kill-and-rerun paths run for real. ~10 s total."""

from __future__ import annotations

import fcntl
import json
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from msd_server import TASK, build_task_tar, md5, serve, tar_of
from pgps.cli import main as cli
from pgps.data.catalog import MSD_MD5
from pgps.data.validate import validate_msd_task

PGPS = [sys.executable, "-m", "pgps.cli"]


@pytest.fixture
def server():
    """Yields (base_url, behaviour) of a server holding the test tarball; stops at teardown."""
    tar, _ = build_task_tar()
    with serve({f"{TASK}.tar": tar}) as running:
        yield running


def _acquire(tmp: Path, *extra: str) -> list[str]:
    return ["acquire", TASK, "--data", str(tmp / "data"), *extra]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _assert_extracted(tmp: Path, tar: bytes) -> None:
    """Every file of the tarball landed byte-identical, no resource forks, no leftovers; the task validates."""
    _, files = build_task_tar()
    dest = tmp / "data" / "raw" / TASK
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data, rel
    assert not list(dest.rglob("._*"))
    assert _listing(tmp / "data" / "raw") == [TASK]
    downloads = tmp / "data" / "downloads"
    assert md5((downloads / f"{TASK}.tar").read_bytes()) == md5(tar)
    assert not (downloads / f"{TASK}.tar.part").exists()
    validate_msd_task(dest)


# ---------------------------------------------------------------- tests
def test_download_verify_extract_then_rerun_is_a_no_op(server, tmp_path, capsys):
    url, b = server
    tar = b.files[f"{TASK}.tar"]
    assert cli(_acquire(tmp_path, "--url-base", url, "--md5", md5(tar))) == 0
    _assert_extracted(tmp_path, tar)
    assert b.requests == [{"path": f"/{TASK}.tar", "range": None}]
    assert cli(_acquire(tmp_path, "--url-base", url, "--md5", md5(tar))) == 0
    assert len(b.requests) == 1, "a complete task must not be fetched again"
    assert "already present" in capsys.readouterr().err


def test_truncated_download_errors_then_resumes_with_range(server, tmp_path, capsys):
    url, b = server
    tar = b.files[f"{TASK}.tar"]
    b.drop_after, b.drops_left = len(tar) // 3, 1
    assert cli(_acquire(tmp_path, "--url-base", url, "--md5", md5(tar), "--retries", "0")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    part = tmp_path / "data" / "downloads" / f"{TASK}.tar.part"
    assert err.startswith(f"pgps acquire: error: {part}: download incomplete")
    assert "re-run to resume" in err
    assert part.stat().st_size == len(tar) // 3
    assert not (tmp_path / "data" / "downloads" / f"{TASK}.tar").exists()
    assert _listing(tmp_path / "data" / "raw") == []

    assert cli(_acquire(tmp_path, "--url-base", url, "--md5", md5(tar))) == 0
    assert [r["range"] for r in b.requests] == [None, f"bytes={len(tar) // 3}-"]
    _assert_extracted(tmp_path, tar)


def test_dropped_connections_resume_within_one_run(server, tmp_path):
    url, b = server
    tar = b.files[f"{TASK}.tar"]
    b.drop_after, b.drops_left = 50_000, 3  # each response breaks after 50 kB
    # --retries 1 suffices: the budget counts attempts in a row that made no progress
    assert cli(_acquire(tmp_path, "--url-base", url, "--md5", md5(tar), "--retries", "1")) == 0
    assert [r["range"] for r in b.requests] == [None, "bytes=50000-", "bytes=100000-", "bytes=150000-"]
    _assert_extracted(tmp_path, tar)


def test_complete_part_file_is_verified_not_refetched(server, tmp_path):
    """Killed after the last byte but before the MD5 check: the Range request gets 416 and nothing is re-sent."""
    url, b = server
    tar = b.files[f"{TASK}.tar"]
    downloads = tmp_path / "data" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / f"{TASK}.tar.part").write_bytes(tar)
    assert cli(_acquire(tmp_path, "--url-base", url, "--md5", md5(tar))) == 0
    assert [r["range"] for r in b.requests] == [f"bytes={len(tar)}-"]
    _assert_extracted(tmp_path, tar)


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    url, b = server
    tar = b.files[f"{TASK}.tar"]
    b.drop_after, b.drops_left, b.honour_range = 10_000, 1, False
    assert cli(_acquire(tmp_path, "--url-base", url, "--md5", md5(tar), "--retries", "1")) == 0
    assert [r["range"] for r in b.requests] == [None, "bytes=10000-"]  # asked, got 200, rewrote from byte 0
    _assert_extracted(tmp_path, tar)


def test_md5_mismatch_is_one_error_and_nothing_lands(server, tmp_path, capsys):
    url, b = server
    other = tmp_path / "data" / "raw" / "Task09_Spleen" / "dataset.json"  # a task acquired earlier
    other.parent.mkdir(parents=True)
    other.write_text("{}")
    before = [(p, p.stat().st_mtime_ns) for p in sorted((tmp_path / "data" / "raw").rglob("*"))]
    # no --md5: the published Task04 checksum is checked, and our test tarball cannot match it
    assert cli(_acquire(tmp_path, "--url-base", url)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    part = tmp_path / "data" / "downloads" / f"{TASK}.tar.part"
    assert err[-1] == (
        f"pgps acquire: error: {part}: MD5 mismatch (got {md5(b.files[f'{TASK}.tar'])}, "
        f"expected {MSD_MD5[TASK]}); the bad copy {part.name} was removed"
    )
    assert [(p, p.stat().st_mtime_ns) for p in sorted((tmp_path / "data" / "raw").rglob("*"))] == before
    assert _listing(tmp_path / "data" / "raw") == ["Task09_Spleen"]  # no temp folder left either
    assert [p for p in _listing(tmp_path / "data" / "downloads") if not p.endswith(".lock")] == []


def test_killed_download_then_rerun_completes(server, tmp_path):
    url, b = server
    tar = b.files[f"{TASK}.tar"]
    b.delay = 0.05  # ~100 chunks of 4 KiB: several seconds, killed after the first bytes
    part = tmp_path / "data" / "downloads" / f"{TASK}.tar.part"
    proc = subprocess.Popen([*PGPS, *_acquire(tmp_path, "--url-base", url, "--md5", md5(tar))], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size > 20_000):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "download never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = part.stat().st_size
    assert 0 < killed_at < len(tar)
    assert not (tmp_path / "data" / "downloads" / f"{TASK}.tar").exists()
    assert _listing(tmp_path / "data" / "raw") == []

    b.delay = 0.0
    done = subprocess.run([*PGPS, *_acquire(tmp_path, "--url-base", url, "--md5", md5(tar))], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert b.requests[-1]["range"] == f"bytes={killed_at}-"
    _assert_extracted(tmp_path, tar)


KILL_DURING_EXTRACTION = """
import os, shutil, signal, sys
from pgps.cli import main
real = shutil.copyfileobj
calls = []
def copy_then_die(*args, **kwargs):
    real(*args, **kwargs)
    calls.append(1)
    if len(calls) == 3:  # three files written into the temp folder, then the process dies
        os.kill(os.getpid(), signal.SIGKILL)
shutil.copyfileobj = copy_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_killed_extraction_then_rerun_completes(server, tmp_path):
    url, b = server
    tar = b.files[f"{TASK}.tar"]
    script = tmp_path / "die_mid_extraction.py"
    script.write_text(KILL_DURING_EXTRACTION)
    args = _acquire(tmp_path, "--url-base", url, "--md5", md5(tar))
    killed = subprocess.run([sys.executable, str(script), *args], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    raw = tmp_path / "data" / "raw"
    stale = [p for p in raw.iterdir()]
    assert len(stale) == 1 and stale[0].name.startswith(f".{TASK}.")  # partial, never under its real name
    assert stale[0].name.endswith(".partial")
    assert len([p for p in stale[0].rglob("*") if p.is_file()]) == 3

    done = subprocess.run([*PGPS, *args], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert len(b.requests) == 1, "the verified tarball is reused, not downloaded again"
    _assert_extracted(tmp_path, tar)


def test_source_dir_links_and_verifies_without_network(tmp_path, capsys):
    tar, _ = build_task_tar()
    src = tmp_path / "mine"
    src.mkdir()
    (src / f"{TASK}.tar").write_bytes(tar)
    dead = "http://127.0.0.1:9"  # discard port: any download attempt would fail
    assert cli(_acquire(tmp_path, "--source-dir", str(src), "--url-base", dead, "--md5", md5(tar))) == 0
    _assert_extracted(tmp_path, tar)
    assert (src / f"{TASK}.tar").read_bytes() == tar  # the user's file is untouched


def test_source_dir_bad_checksum_keeps_users_file(tmp_path, capsys):
    tar, _ = build_task_tar()
    src = tmp_path / "mine"
    src.mkdir()
    (src / f"{TASK}.tar").write_bytes(tar)
    assert cli(_acquire(tmp_path, "--source-dir", str(src))) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"pgps acquire: error: {src / f'{TASK}.tar'}: MD5 mismatch")
    assert (src / f"{TASK}.tar").read_bytes() == tar
    assert _listing(tmp_path / "data" / "raw") == []
    assert not list((tmp_path / "data" / "downloads").glob("*.tar*"))


def test_tarball_placed_in_downloads_is_verified_and_used(tmp_path, capsys):
    """params.yaml tells users they may link their tarball into data/downloads: it is checked, never trusted."""
    tar, _ = build_task_tar()
    mine = tmp_path / "elsewhere" / f"{TASK}.tar"
    mine.parent.mkdir()
    mine.write_bytes(tar[:-512] + b"\x01" * 512)  # damaged copy
    downloads = tmp_path / "data" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / f"{TASK}.tar").symlink_to(mine)
    dead = "http://127.0.0.1:9"
    assert cli(_acquire(tmp_path, "--url-base", dead, "--md5", md5(tar))) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"pgps acquire: error: {downloads / f'{TASK}.tar'}: MD5 mismatch (got ")
    assert err.endswith("replace the file, or delete it to download")
    assert mine.exists() and _listing(tmp_path / "data" / "raw") == []  # user's file kept, nothing extracted
    mine.write_bytes(tar)  # repaired: now it is used without any download
    assert cli(_acquire(tmp_path, "--url-base", dead, "--md5", md5(tar))) == 0
    _assert_extracted(tmp_path, tar)


def test_concurrent_acquire_of_the_same_task_is_refused(server, tmp_path, capsys):
    url, b = server
    downloads = tmp_path / "data" / "downloads"
    downloads.mkdir(parents=True)
    with open(downloads / f".{TASK}.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a second `pgps acquire` would hold it
        assert cli(_acquire(tmp_path, "--url-base", url, "--md5", md5(b.files[f"{TASK}.tar"]))) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"pgps acquire: error: {downloads / TASK}: another `pgps acquire {TASK}` is running"
    )
    assert b.requests == [] and not (downloads / f"{TASK}.tar.part").exists()


def test_source_dir_without_the_tarball(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(_acquire(tmp_path, "--source-dir", str(tmp_path / "empty"))) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"pgps acquire: error: {tmp_path / 'empty' / f'{TASK}.tar'}: not found (--source-dir must hold {TASK}.tar)"
    )


@pytest.mark.parametrize(
    "evil",
    [
        {"name": f"{TASK}/../../escaped.txt", "type": tarfile.REGTYPE, "why": "unsafe member"},
        {"name": "/tmp/pgps-absolute-escape.txt", "type": tarfile.REGTYPE, "why": "unsafe member"},
        {"name": f"{TASK}/imagesTr/link.nii.gz", "type": tarfile.SYMTYPE, "why": "is a link or special file"},
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_unsafe_tarball_is_refused(tmp_path, capsys, evil):
    _, files = build_task_tar()
    info = tarfile.TarInfo(evil["name"])
    info.type = evil["type"]
    info.linkname = "/etc/passwd" if evil["type"] == tarfile.SYMTYPE else ""
    tar = tar_of({f"{TASK}/{k}": v for k, v in files.items()}, extra=[info])
    src = tmp_path / "mine"
    src.mkdir()
    (src / f"{TASK}.tar").write_bytes(tar)
    assert cli(_acquire(tmp_path, "--source-dir", str(src), "--md5", md5(tar))) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"pgps acquire: error: {tmp_path / 'data' / 'downloads' / f'{TASK}.tar'}: ")
    assert evil["why"] in err and repr(evil["name"]) in err
    assert _listing(tmp_path / "data" / "raw") == []  # the temp folder is gone too
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "data" / "escaped.txt").exists()


def test_http_error_is_one_line(server, tmp_path, capsys):
    url, _ = server
    assert cli(["acquire", "Task09_Spleen", "--data", str(tmp_path), "--url-base", url]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"pgps acquire: error: {url}/Task09_Spleen.tar: HTTP 404 Not Found"
    )
    assert not (tmp_path / "raw").exists()


def test_unreachable_mirror_gives_up_without_progress(tmp_path, capsys):
    dead = "http://127.0.0.1:9"
    assert cli(["acquire", TASK, "--data", str(tmp_path), "--url-base", dead, "--retries", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"pgps acquire: error: download failed after 2 attempt(s) without progress: {dead}/")
    assert "Connection refused" in err[-1]


def test_unknown_task_and_bad_md5_are_clear_errors(tmp_path):
    proc = subprocess.run([*PGPS, "acquire", "Task99_Nope", "--data", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("pgps acquire: error: unknown task 'Task99_Nope': known tasks are Task01_BrainTumour")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert cli(["acquire", "../evil", "--data", str(tmp_path), "--md5", "0" * 32]) == 2
    assert cli(["acquire", TASK, "--data", str(tmp_path), "--md5", "xyz"]) == 2
    assert not (tmp_path / "raw").exists()


def test_synthetic_task_is_generated_not_downloaded(tmp_path):
    assert cli(["acquire", "Task901_PGPSSynth", "--data", str(tmp_path), "--seed", "3"]) == 0
    task = tmp_path / "raw" / "Task901_PGPSSynth"
    validate_msd_task(task)
    assert json.loads((task / "dataset.json").read_text())["numTraining"] > 0
    assert not (tmp_path / "downloads").exists()


def test_published_checksums_are_well_formed():
    assert len(MSD_MD5) == 10 and all(re.fullmatch(r"[0-9a-f]{32}", v) for v in MSD_MD5.values())
    assert [int(k[4:6]) for k in MSD_MD5] == list(range(1, 11))
