"""Resumable HTTP download into a ``.part`` file (HTTP Range), writing only into a file this process owns.

The ``.part`` file keeps what arrived, so a dropped connection, a timeout or a killed process costs only the
bytes in flight: the next attempt asks for the rest with ``Range: bytes=N-``. Before anything is written, the
``.part`` must be a plain file with one name (``st_nlink == 1``, not a symlink): a hard or symbolic link to a
user's file (an older ``--source-dir`` run linked the user's tarball there) is unlinked, never written through,
and the download starts over. A fresh download never truncates an existing file either: it unlinks the name and
creates a new file exclusively.
"""

from __future__ import annotations

import http.client
import os
import re
import stat
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from pgps.data.progress import bar
from pgps.errors import PGPSError

CHUNK = 1 << 20
USER_AGENT = "pgps-acquire/0.1 (python urllib)"


class _Interrupted(Exception):
    """A download stopped early (dropped connection, timeout); the ``.part`` file keeps what arrived."""


def _content_range_total(value: str | None) -> int | None:
    """Total size from ``Content-Range: bytes a-b/N`` or ``bytes */N``."""
    m = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(m.group(1)) if m else None


def _is_own_file(st: os.stat_result) -> bool:
    """A regular file with a single name: writing to it can change nothing but our ``.part``."""
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def owned_part_size(part: Path) -> int:
    """Bytes already in ``part``; a ``.part`` that is not ours alone (a link, a folder) is unlinked first."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return 0
    if _is_own_file(st):
        return st.st_size
    kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a plain file with one name"
    if stat.S_ISDIR(st.st_mode):
        raise PGPSError(f"{part}: is a directory; remove it to download")
    print(f"{part}: {kind} (it may be your own tarball); unlinked it, not writing through it", file=sys.stderr)
    part.unlink()
    return 0


def _open_part(part: Path, append: bool) -> BinaryIO:
    """Open ``part`` for appending (only if it is ours alone) or as a new file; never follows a symlink."""
    if not append:
        part.unlink(missing_ok=True)  # never truncate: the old inode may have other names
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    else:
        fd = os.open(part, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        if not _is_own_file(os.fstat(fd)):  # linked in since we looked: do not write through it
            os.close(fd)
            raise _Interrupted(f"{part} changed under us (now linked elsewhere); restarting")
    return os.fdopen(fd, "ab" if append else "wb")


def _fetch_once(url: str, part: Path, timeout: float) -> int | None:
    """Append the rest of ``url`` to ``part``; returns the total size if the server told it.

    Raises _Interrupted when the transfer stops early, so the caller can retry with a Range request.
    """
    have = owned_part_size(part)
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
            content_range = response.headers.get("Content-Range", "")
            start = re.match(r"bytes\s+(\d+)-", content_range)
            if not start or int(start.group(1)) != have:
                raise PGPSError(f"{url}: server answered Range bytes={have}- with {content_range!r}")
            total = _content_range_total(content_range)
            append = True
        else:  # 200: the whole file (a server without Range support sends it all again)
            have, append = 0, False
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        received = have
        try:
            with _open_part(part, append) as out, bar(f"download {part.name}", total, initial=have) as progress:
                while block := response.read1(CHUNK):  # what has arrived, so a kill loses little
                    out.write(block)
                    received += len(block)
                    progress.update(len(block))
                out.flush()
                os.fsync(out.fileno())  # what the next attempt resumes from must be on disk, not in a cache
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
        have = owned_part_size(part)
        print(f"downloading {url} -> {part}" + (f" (resuming at byte {have})" if have else ""), file=sys.stderr)
        try:
            _fetch_once(url, part, timeout)
            return
        except _Interrupted as exc:
            size = part.stat().st_size if part.exists() else 0
            if size > have:
                attempt = 0  # progress: the retry budget is for attempts that get nowhere
            if attempt >= retries:
                if size:
                    msg = f"{part}: download incomplete ({exc}); re-run to resume from the partial file"
                else:
                    msg = f"download failed after {attempt + 1} attempt(s) without progress: {exc}"
                raise PGPSError(msg) from None
            attempt += 1
            wait = min(0.25 * 2.0 ** (attempt - 1), 30.0)
            print(f"  interrupted: {exc}; retry {attempt}/{retries} in {wait:.1f}s", file=sys.stderr)
            time.sleep(wait)
