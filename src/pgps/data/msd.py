"""`pgps acquire`: get one Medical Segmentation Decathlon task into ``data/raw/<TaskNN_Name>``.

The tarballs are large (27 MB to 27 GB), so a download resumes from its ``.part`` file with an HTTP Range
request (``pgps.data.download``), and nothing counts as done before it is proven: the tarball gets its final name
only after its MD5 matches the published checksum, and the task folder appears in ``data/raw`` only by one swap
of a fully extracted temp folder (``pgps.data.extract``). A process killed at any point therefore leaves either
nothing or a ``.part`` / temp entry that the next run resumes or discards. A user's own tarball
(``--source-dir``) is only ever read: it is hard-linked (or copied) under a temp name, verified there, and
renamed; nothing is ever opened for writing through a name that may be linked to it. The reduced synthetic tasks
are generated instead of downloaded.

Importing this module is cheap (standard library only): other code reads ``MSD_MD5`` from it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from pgps.data.catalog import MSD_MD5, TASK_NAME_RE, TASK_VARIANT
from pgps.data.download import download
from pgps.data.extract import DEFAULT_MAX_MEMBERS, DEFAULT_MAX_RATIO, Limits, extract, remove_leftovers
from pgps.data.fsinspect import file_problem
from pgps.data.messages import user_errors
from pgps.data.progress import bar
from pgps.errors import PGPSError
from pgps.fileio import clean_partials, write_with
from pgps.paths import data_root

# The public mirror MONAI's DecathlonDataset uses (no sign-in); the MD5s are in pgps.data.catalog.
DEFAULT_URL_BASE = "https://msd-for-monai.s3-us-west-2.amazonaws.com"
MD5_RE = re.compile(r"[0-9a-f]{32}")  # use with fullmatch
CHUNK = 1 << 20


def synthetic_tasks() -> dict[str, str]:
    """Task name -> generator variant, read from the generator so the two never disagree."""
    return dict(TASK_VARIANT)


def expected_md5(task: str, md5: str | None) -> str:
    """The checksum to verify against: the published one, or the user's for a task outside the table."""
    if md5 is not None:
        md5 = md5.strip().lower()
        if not MD5_RE.fullmatch(md5):
            raise PGPSError(f"--md5 {md5!r}: not a 32-digit hexadecimal MD5")
        return md5
    if task not in MSD_MD5:
        known = ", ".join([*MSD_MD5, *synthetic_tasks()])
        raise PGPSError(f"unknown task {task!r}: known tasks are {known} (another tarball needs --md5)")
    return MSD_MD5[task]


def file_md5(path: Path) -> str:
    """Stream a file through MD5 (tarballs do not fit in memory), with a progress bar on a terminal."""
    hasher = hashlib.md5(usedforsecurity=False)  # an integrity check; FIPS builds allow it
    with open(path, "rb") as fh, bar(f"MD5 {path.name}", os.fstat(fh.fileno()).st_size) as progress:
        while block := fh.read(CHUNK):
            hasher.update(block)
            progress.update(len(block))
    return hasher.hexdigest()


@contextlib.contextmanager
def _task_lock(downloads: Path, task: str) -> Iterator[None]:
    """One acquire per task at a time; the kernel drops the lock if the process is killed."""
    with open(downloads / f".{task}.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PGPSError(f"{downloads / task}: another `pgps acquire {task}` is running") from None
        yield


def verify_md5(path: Path, want: str, origin: Path | None = None) -> None:
    """Raise (after removing ``path``, so it is never mistaken for a good tarball) when the MD5 differs.

    ``origin`` is the user's file when ``path`` is our link to or copy of it: the message names it, and only our
    name is removed.
    """
    got = file_md5(path)
    if got != want:
        path.unlink(missing_ok=True)
        if origin is not None:
            raise PGPSError(f"{origin}: MD5 mismatch (got {got}, expected {want}); your file was left as it is")
        raise PGPSError(f"{path}: MD5 mismatch (got {got}, expected {want}); the bad copy {path.name} was removed")


def _link_or_copy(source: Path, tmp: Path) -> None:
    """``tmp`` becomes a second name of ``source`` (same disk: no 27 GB copy) or a copy of it. Either way it is
    only read from here on: nothing opens it for writing, and a killed run leaves just a temp name to unlink."""
    tmp.unlink()  # the empty temp file write_with made; the name is ours (we hold the task lock)
    try:
        os.link(source, tmp)
        return
    except OSError:
        pass  # another filesystem, or links not allowed: copy
    try:
        with (
            open(source, "rb") as src,
            open(tmp, "xb") as out,
            bar(f"copy {source.name}", os.fstat(src.fileno()).st_size) as progress,
        ):
            while block := src.read(CHUNK):
                out.write(block)
                progress.update(len(block))
    except OSError as exc:
        raise PGPSError(f"{source}: cannot copy to {tmp.parent}: {exc.strerror or exc}") from None


def bring_in(source: Path, tarball: Path, want: str) -> None:
    """Publish the user's ``source`` as ``tarball`` once its MD5 is proven; the user's file is never written."""

    def link_and_verify(tmp: Path) -> None:
        _link_or_copy(source, tmp)
        verify_md5(tmp, want, origin=source)

    write_with(tarball, link_and_verify)


def _check_placed_tarball(tarball: Path, want: str) -> None:
    """A tarball under its final name: ours are renamed only after verification, so a bad one was put there by
    hand (a link to the user's file, for instance) and is reported, never deleted or overwritten."""
    problem = file_problem(tarball)
    if problem:
        raise PGPSError(f"{tarball}: {problem}; replace it with the task's tarball, or delete it to download")
    got = file_md5(tarball)
    if got != want:
        raise PGPSError(
            f"{tarball}: MD5 mismatch (got {got}, expected {want}); replace the file, or delete it to download"
        )


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
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> Path:
    """Make ``raw/<task>`` exist and be complete; returns its path. Safe to re-run after any crash.

    ``max_ratio``/``max_members`` cap the extraction of a tarball checked against a user-supplied MD5 only.
    """
    synthetic = synthetic_tasks()
    if task in synthetic:
        from pgps.data.synthetic import make_task

        return make_task(raw, seed=seed, variant=synthetic[task])
    if not TASK_NAME_RE.fullmatch(task):
        raise PGPSError(f"invalid task name {task!r}: expected TaskNN_Name, e.g. Task04_Hippocampus")
    want = expected_md5(task, md5)
    dest = raw / task
    if dest.is_dir() and not force:
        print(f"{dest}: already present", file=sys.stderr)
        return dest
    limits = None if want == MSD_MD5.get(task) else Limits(max_ratio, max_members)
    downloads.mkdir(parents=True, exist_ok=True)
    with _task_lock(downloads, task):
        remove_leftovers(raw, task)
        tarball = downloads / f"{task}.tar"
        clean_partials(downloads, tarball.name)  # links/copies of a killed --source-dir run: unlinked, not written
        if tarball.exists():
            _check_placed_tarball(tarball, want)
        elif source_dir is not None:
            source = source_dir / f"{task}.tar"
            problem = file_problem(source)
            if problem:
                raise PGPSError(f"{source}: {problem} (--source-dir must hold {task}.tar)")
            bring_in(source, tarball, want)
        else:
            part = downloads / f"{task}.tar.part"
            download(f"{url_base.rstrip('/')}/{task}.tar", part, retries, timeout)
            verify_md5(part, want)
            os.replace(part, tarball)  # the final name means: complete and verified (the .part was fsynced)
        print(f"{tarball}: MD5 {want} OK; extracting", file=sys.stderr)
        return extract(tarball, task, raw, limits)


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
    parser.add_argument(
        "--max-extract-ratio",
        type=float,
        default=DEFAULT_MAX_RATIO,
        help=f"with --md5: extract at most this many times the tarball's size (default {DEFAULT_MAX_RATIO:g})",
    )
    parser.add_argument(
        "--max-members",
        type=int,
        default=DEFAULT_MAX_MEMBERS,
        help=f"with --md5: refuse archives with more members (default {DEFAULT_MAX_MEMBERS})",
    )


@user_errors
def main(args: argparse.Namespace) -> int:
    if args.md5 is not None and len(args.tasks) > 1:
        raise PGPSError("--md5 applies to one task; acquire the tasks one at a time")
    if not args.max_extract_ratio > 0:
        raise PGPSError(f"--max-extract-ratio must be > 0, got {args.max_extract_ratio:g}")
    if args.max_members < 1:
        raise PGPSError(f"--max-members must be >= 1, got {args.max_members}")
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
                max_ratio=args.max_extract_ratio,
                max_members=args.max_members,
            )
        )
    return 0
