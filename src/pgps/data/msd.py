"""`pgps acquire`: get one Medical Segmentation Decathlon task into ``data/raw/<TaskNN_Name>``.

The tarballs are large (27 MB to 27 GB), so a download resumes from its ``.part`` file with an HTTP Range
request, and nothing counts as done before it is proven: the tarball gets its final name only after its MD5
matches the published checksum, and the task folder appears in ``data/raw`` only by one rename of a fully
extracted temp folder. A process killed at any point therefore leaves either nothing or a ``.part`` / temp
folder that the next run resumes or discards. The reduced synthetic tasks are generated instead of downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from pgps.errors import PGPSError
from pgps.paths import data_root

# The public mirror MONAI's DecathlonDataset uses (no sign-in), and the MD5 of each tarball as MONAI publishes it.
DEFAULT_URL_BASE = "https://msd-for-monai.s3-us-west-2.amazonaws.com"
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
TASK_NAME_RE = re.compile(r"^Task\d{2,3}_[A-Za-z0-9]+$")
MD5_RE = re.compile(r"^[0-9a-f]{32}$")
CHUNK = 1 << 20
USER_AGENT = "pgps-acquire/0.1 (python urllib)"


class _Interrupted(Exception):
    """A download stopped early (dropped connection, timeout); the ``.part`` file keeps what arrived."""


def synthetic_tasks() -> dict[str, str]:
    """Task name -> generator variant, read from the generator so the two never disagree."""
    from pgps.data.synthetic import TASK_VARIANT

    return dict(TASK_VARIANT)


def expected_md5(task: str, md5: str | None) -> str:
    """The checksum to verify against: the published one, or the user's for a task outside the table."""
    if md5 is not None:
        md5 = md5.strip().lower()
        if not MD5_RE.match(md5):
            raise PGPSError(f"--md5 {md5!r}: not a 32-digit hexadecimal MD5")
        return md5
    if task not in MSD_MD5:
        known = ", ".join([*MSD_MD5, *synthetic_tasks()])
        raise PGPSError(f"unknown task {task!r}: known tasks are {known} (another tarball needs --md5)")
    return MSD_MD5[task]


def file_md5(path: Path, hasher: hashlib._Hash | None = None) -> hashlib._Hash:
    """Stream a file through MD5 (tarballs do not fit in memory)."""
    hasher = hasher or hashlib.md5(usedforsecurity=False)  # an integrity check; FIPS builds allow it
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            hasher.update(block)
    return hasher


@contextlib.contextmanager
def _task_lock(downloads: Path, task: str) -> Iterator[None]:
    """One acquire per task at a time; the kernel drops the lock if the process is killed."""
    with open(downloads / f".{task}.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PGPSError(f"{downloads / task}: another `pgps acquire {task}` is running") from None
        yield


def _content_range_total(value: str | None) -> int | None:
    """Total size from ``Content-Range: bytes a-b/N`` or ``bytes */N``."""
    m = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(m.group(1)) if m else None


def _fetch_once(url: str, part: Path, timeout: float) -> int | None:
    """Append the rest of ``url`` to ``part``; returns the total size if the server told it.

    Raises _Interrupted when the transfer stops early, so the caller can retry with a Range request.
    """
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            total = _content_range_total(exc.headers.get("Content-Range"))
            if total == have:
                return total  # the part file already holds everything
            part.unlink()  # larger than the remote file: not a prefix of it, start over
            raise _Interrupted(f"{part.name} did not match the remote size; restarting") from None
        raise PGPSError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:  # URLError, refused, reset, timeout
        reason = getattr(exc, "reason", exc)
        raise _Interrupted(f"{url}: {reason}") from None
    with response:
        if have and response.status == 206:
            start = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
            if not start or int(start.group(1)) != have:
                raise PGPSError(f"{url}: server answered Range bytes={have}- with {response.headers['Content-Range']}")
            total = _content_range_total(response.headers.get("Content-Range"))
            mode = "ab"
        else:  # 200: the whole file (a server without Range support sends it all again)
            have, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        received = have
        try:
            with open(part, mode) as out:
                while block := response.read1(CHUNK):  # what has arrived, so a kill loses little
                    out.write(block)
                    received += len(block)
                out.flush()
                os.fsync(out.fileno())
        except (OSError, http.client.HTTPException) as exc:  # reset, timeout (and a full disk, reported as is)
            raise _Interrupted(f"{url}: connection lost after {received} bytes ({exc})") from None
    if total is not None and received < total:
        raise _Interrupted(f"{url}: connection closed after {received} of {total} bytes")
    return total


def download(url: str, part: Path, retries: int, timeout: float) -> None:
    """Fetch ``url`` into ``part``, resuming after each interruption; gives up after ``retries`` attempts in a
    row that brought no new bytes (a flaky link that keeps making progress on a 27 GB file is not a failure)."""
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        print(f"downloading {url} -> {part}" + (f" (resuming at byte {have})" if have else ""), file=sys.stderr)
        try:
            _fetch_once(url, part, timeout)
            return
        except _Interrupted as exc:
            if part.exists() and part.stat().st_size > have:
                attempt = 0  # progress: the retry budget is for attempts that get nowhere
            if attempt >= retries:
                if part.exists() and part.stat().st_size:
                    msg = f"{part}: download incomplete ({exc}); re-run to resume from the partial file"
                else:
                    msg = f"download failed after {attempt + 1} attempt(s) without progress: {exc}"
                raise PGPSError(msg) from None
            attempt += 1
            wait = min(0.25 * 2.0 ** (attempt - 1), 30.0)
            print(f"  interrupted: {exc}; retry {attempt}/{retries} in {wait:.1f}s", file=sys.stderr)
            time.sleep(wait)


def copy_from_source(source: Path, part: Path) -> None:
    """Bring a user's tarball in: a hard link when on the same disk (no 27 GB copy), else a copy."""
    part.unlink(missing_ok=True)
    try:
        os.link(source, part)
    except OSError:
        try:
            shutil.copyfile(source, part)
        except OSError as exc:
            raise PGPSError(f"{source}: cannot copy to {part}: {exc.strerror or exc}") from None


def verify_md5(path: Path, want: str, origin: Path | None = None) -> None:
    """Raise (after removing ``path``, so it is never mistaken for a good tarball) when the MD5 differs.

    ``origin`` names the user's file in the message when ``path`` is our copy of it.
    """
    got = file_md5(path).hexdigest()
    if got != want:
        path.unlink(missing_ok=True)
        what = f"{origin}: MD5 mismatch" if origin else f"{path}: MD5 mismatch"
        raise PGPSError(f"{what} (got {got}, expected {want}); the bad copy {path.name} was removed")


def _safe_member_path(member: tarfile.TarInfo, tarball: Path) -> PurePosixPath | None:
    """The member's relative path, None for entries to skip, or an error for anything unsafe."""
    path = PurePosixPath(member.name)
    parts = [p for p in path.parts if p not in ("", ".")]
    if path.is_absolute() or ".." in parts:
        raise PGPSError(f"{tarball}: unsafe member {member.name!r} (absolute path or '..'); refusing to extract")
    if not parts or parts[0] == "__MACOSX" or any(p.startswith("._") for p in parts):
        return None  # macOS resource forks, not data
    if not (member.isfile() or member.isdir()):
        raise PGPSError(f"{tarball}: member {member.name!r} is a link or special file; refusing to extract")
    return PurePosixPath(*parts)


def extract(tarball: Path, task: str, raw: Path) -> Path:
    """Extract into a temp folder beside the destination, then rename it to ``raw/<task>`` in one step."""
    raw.mkdir(parents=True, exist_ok=True)
    dest = raw / task
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}.extract-", dir=raw))
    try:
        tops: set[str] = set()
        try:
            with tarfile.open(tarball, "r:*") as tf:
                for member in tf:
                    rel = _safe_member_path(member, tarball)
                    if rel is None:
                        continue
                    tops.add(rel.parts[0])
                    target = tmp.joinpath(*rel.parts)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(member)
                    assert src is not None  # regular file
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
        except (tarfile.TarError, EOFError) as exc:
            raise PGPSError(f"{tarball}: not a readable tar archive ({exc})") from None
        if len(tops) != 1:
            raise PGPSError(f"{tarball}: expected one top-level task folder, found {sorted(tops) or 'none'}")
        root = tmp / tops.pop()
        if not root.is_dir() or not (root / "dataset.json").is_file():
            raise PGPSError(f"{tarball}: no {root.name}/dataset.json in the archive; not an MSD task tarball")
        _fsync_tree(root)
        old = None
        if dest.exists():  # --force: swap in the new copy, then drop the old one
            old = tmp / ".old"
            os.replace(dest, old)
        os.replace(root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _fsync_tree(root: Path) -> None:
    """Flush extracted files before the rename publishes them, so a power cut cannot leave empty files."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _remove_stale(raw: Path, task: str) -> None:
    """Temp folders of an extraction that was killed: never complete, always safe to drop."""
    if raw.is_dir():
        for stale in raw.glob(f".{task}.extract-*"):
            shutil.rmtree(stale, ignore_errors=True)


def acquire(
    task: str,
    raw: Path,
    downloads: Path,
    *,
    url_base: str = DEFAULT_URL_BASE,
    source_dir: Path | None = None,
    md5: str | None = None,
    force: bool = False,
    retries: int = 5,
    timeout: float = 60.0,
    seed: int = 0,
) -> Path:
    """Make ``raw/<task>`` exist and be complete; returns its path. Safe to re-run after any crash."""
    synthetic = synthetic_tasks()
    if task in synthetic:
        from pgps.data.synthetic import make_task

        return make_task(raw, seed=seed, variant=synthetic[task])
    if not TASK_NAME_RE.match(task):
        raise PGPSError(f"invalid task name {task!r}: expected TaskNN_Name, e.g. Task04_Hippocampus")
    want = expected_md5(task, md5)
    dest = raw / task
    if dest.is_dir() and not force:
        print(f"{dest}: already present", file=sys.stderr)
        return dest
    downloads.mkdir(parents=True, exist_ok=True)
    with _task_lock(downloads, task):
        _remove_stale(raw, task)
        tarball = downloads / f"{task}.tar"
        part = downloads / f"{task}.tar.part"
        if tarball.exists():  # ours are renamed only after verification, so a bad one was put there by hand
            got = file_md5(tarball).hexdigest()
            if got != want:
                raise PGPSError(
                    f"{tarball}: MD5 mismatch (got {got}, expected {want}); replace the file, or delete it to download"
                )
        if not tarball.exists():
            if source_dir is not None:
                source = source_dir / f"{task}.tar"
                if not source.is_file():
                    raise PGPSError(f"{source}: not found (--source-dir must hold {task}.tar)")
                copy_from_source(source, part)
            else:
                source = None
                download(f"{url_base.rstrip('/')}/{task}.tar", part, retries, timeout)
            verify_md5(part, want, source)
            os.replace(part, tarball)  # the final name means: complete and verified
        print(f"{tarball}: MD5 {want} OK; extracting", file=sys.stderr)
        return extract(tarball, task, raw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "tasks",
        nargs="+",
        metavar="TASK",
        help="MSD task (Task01_BrainTumour ... Task10_Colon) or a synthetic one (Task901_PGPSSynth)",
    )
    parser.add_argument("--data", type=Path, default=None, help="data root (default: $PGPS_DATA or ./data)")
    parser.add_argument("--raw-dir", type=Path, default=None, help="where tasks land (default: <data>/raw)")
    parser.add_argument("--downloads-dir", type=Path, default=None, help="tarballs (default: <data>/downloads)")
    parser.add_argument(
        "--source-dir",
        type=Path,
        default=None,
        help="folder that already holds TaskNN_Name.tar: link/copy and verify instead of downloading",
    )
    parser.add_argument("--url-base", default=DEFAULT_URL_BASE, help=f"mirror (default {DEFAULT_URL_BASE})")
    parser.add_argument("--md5", default=None, help="expected MD5 (default: the published one; needed for other tasks)")
    parser.add_argument("--force", action="store_true", help="extract again even if data/raw/TASK exists")
    parser.add_argument(
        "--retries", type=int, default=5, help="retries in a row without progress before giving up (default 5)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a retry")
    parser.add_argument("--seed", type=int, default=0, help="seed of a synthetic task")


def main(args: argparse.Namespace) -> int:
    if args.md5 is not None and len(args.tasks) > 1:
        raise PGPSError("--md5 applies to one task; acquire the tasks one at a time")
    root = args.data.resolve() if args.data else data_root()
    raw = args.raw_dir or root / "raw"
    downloads = args.downloads_dir or root / "downloads"
    for task in args.tasks:
        print(
            acquire(
                task,
                raw,
                downloads,
                url_base=args.url_base,
                source_dir=args.source_dir,
                md5=args.md5,
                force=args.force,
                retries=args.retries,
                timeout=args.timeout,
                seed=args.seed,
            )
        )
    return 0
