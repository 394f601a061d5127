"""Extract a task tarball safely into ``raw/<task>``: one folder, nothing outside it, nothing half-written.

Refused, each with one line naming the tarball and the member: absolute paths and ``..``, links and special
files, two members with the same path (a duplicate file, or a file and a folder of the same name in either
order), more than one top-level folder, an archive without members. For a tarball whose checksum the user
supplied (not one of the published MSD checksums) the archive is also capped, against decompression bombs: at
most ``max_ratio`` times the tarball's size in extracted bytes and ``max_members`` members, both checked before a
member is written. The members land in a temp folder that is swapped in as the task folder in one step
(``pgps.fileio.atomic_dir``).
"""

from __future__ import annotations

import errno
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pgps.data.messages import squeeze
from pgps.data.progress import bar
from pgps.errors import PGPSError
from pgps.fileio import atomic_dir, clean_partials

CHUNK = 1 << 20
DEFAULT_MAX_RATIO = 50.0  # MSD ships .nii.gz in a plain tar (ratio ~1); a tar.gz of raw .nii stays well below
DEFAULT_MAX_MEMBERS = 100_000  # the largest MSD task (BrainTumour) has ~1,300 members


@dataclass(frozen=True)
class Limits:
    """Caps on what an untrusted archive may expand to; None for a tarball with a published checksum."""

    max_ratio: float = DEFAULT_MAX_RATIO
    max_members: int = DEFAULT_MAX_MEMBERS


def _member_path(member: tarfile.TarInfo, tarball: Path) -> PurePosixPath | None:
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


class _Layout:
    """Every path the archive creates, so that a second member with the same path is caught before writing."""

    def __init__(self, tarball: Path) -> None:
        self.tarball = tarball
        self.kinds: dict[PurePosixPath, str] = {}  # path -> "file" | "folder"

    def claim(self, rel: PurePosixPath, kind: str, name: str) -> bool:
        """Record ``rel`` (and its parents as folders); False when ``rel`` is a folder seen before."""
        for parent in reversed(rel.parents[:-1]):  # "a", "a/b", ... for "a/b/c"
            if self.kinds.setdefault(parent, "folder") != "folder":
                raise PGPSError(
                    f"{self.tarball}: member {name!r} lies inside {str(parent)!r}, which the archive also holds "
                    "as a file; refusing to extract"
                )
        seen = self.kinds.get(rel)
        if seen is None:
            self.kinds[rel] = kind
            return True
        if seen == kind == "folder":
            return False  # a folder listed twice (tar -r appends do this): harmless
        what = "a duplicate member" if seen == kind else f"a {kind} where the archive also holds a {seen}"
        raise PGPSError(f"{self.tarball}: member {name!r} is {what} of the same name; refusing to extract")


def _check_budget(tarball: Path, tar_size: int, limits: Limits | None, members: int, extracted: int, size: int) -> None:
    """Refuse the next member if it would take an untrusted archive past its caps."""
    if limits is None:
        return
    if members > limits.max_members:
        raise PGPSError(
            f"{tarball}: more than {limits.max_members} members, a decompression bomb? "
            "(user-supplied checksum: raise --max-members if the archive is genuine)"
        )
    max_bytes = limits.max_ratio * tar_size
    if extracted + size > max_bytes:
        raise PGPSError(
            f"{tarball}: extracting would write more than {int(max_bytes)} bytes ({limits.max_ratio:g} x the "
            "tarball's size), a decompression bomb? (user-supplied checksum: raise --max-extract-ratio if the "
            "archive is genuine)"
        )


_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # from write(), which names no file


_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz: what tarfile's "r:*" opens


def _compressed(tarball: Path) -> bool:
    """A compressed archive expands beyond its size, so its progress bar shows bytes without a total."""
    with open(tarball, "rb") as fh:
        return fh.read(6).startswith(_COMPRESSED_MAGIC)


def extract(tarball: Path, task: str, raw: Path, limits: Limits | None = None) -> Path:
    """Extract ``tarball`` (one top-level folder holding dataset.json) as ``raw/<task>``; returns that path."""
    dest = raw / task
    tar_size = tarball.stat().st_size
    if tar_size == 0:
        raise PGPSError(f"{tarball}: empty file (0 bytes), not a tar archive")
    layout = _Layout(tarball)
    top: str | None = None
    members = extracted = 0
    with atomic_dir(dest) as tmp:
        try:
            with (
                tarfile.open(tarball, "r:*") as tf,
                bar(f"extract {tarball.name}", None if _compressed(tarball) else tar_size) as progress,
            ):
                for member in tf:
                    members += 1
                    _check_budget(tarball, tar_size, limits, members, extracted, 0)
                    rel = _member_path(member, tarball)
                    if rel is None:
                        continue
                    if top is None:
                        top = rel.parts[0]
                    elif rel.parts[0] != top:
                        raise PGPSError(
                            f"{tarball}: expected one top-level task folder, found {top!r} and {rel.parts[0]!r}"
                        )
                    inner = PurePosixPath(*rel.parts[1:]) if len(rel.parts) > 1 else None
                    if inner is None:
                        if member.isfile():
                            raise PGPSError(f"{tarball}: top-level member {member.name!r} is a file, not a folder")
                        continue
                    if not layout.claim(inner, "folder" if member.isdir() else "file", member.name):
                        continue
                    target = tmp.joinpath(*inner.parts)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    _check_budget(tarball, tar_size, limits, members, extracted, member.size)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(member)
                    if src is None:  # cannot happen for a regular member; refuse rather than guess
                        raise PGPSError(f"{tarball}: member {member.name!r} has no data")
                    with src, open(target, "xb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
                    extracted += member.size
                    progress.update(member.size)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            if isinstance(exc, OSError) and exc.filename is not None and os.fsdecode(exc.filename) != str(tarball):
                raise PGPSError(f"{os.fsdecode(exc.filename)}: cannot write ({exc.strerror or exc})") from None
            if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
                raise PGPSError(f"{raw}: cannot write the extracted task ({exc.strerror or exc})") from None
            raise PGPSError(f"{tarball}: not a readable tar archive ({squeeze(exc)})") from None
        if top is None:
            raise PGPSError(f"{tarball}: empty archive (no task folder in it); not an MSD task tarball")
        if not (tmp / "dataset.json").is_file():
            raise PGPSError(f"{tarball}: no {top}/dataset.json in the archive; not an MSD task tarball")
    return dest


def remove_leftovers(raw: Path, task: str) -> None:
    """What a killed extraction left: our temp folders, and those of older versions (``.<task>.extract-*``)."""
    clean_partials(raw, task)
    if raw.is_dir():
        for stale in raw.glob(f".{task}.extract-*"):
            shutil.rmtree(stale, ignore_errors=True)
