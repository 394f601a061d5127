"""Say precisely why a path cannot be read, before anything opens it.

Opening a FIFO blocks forever, a broken or looping symlink reads as "does not exist", and an unreadable folder
raises PermissionError deep inside a listing; the data verbs ask here first and report one line naming the path.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from pgps.errors import PGPSError

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _stat_problem(path: Path) -> tuple[os.stat_result | None, str | None]:
    try:
        return os.stat(path), None
    except FileNotFoundError:
        if os.path.islink(path):
            return None, f"broken symbolic link (points to {os.readlink(path)!r}, which does not exist)"
        return None, "not found"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "symbolic link loop (the link resolves to itself)"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return None, "permission denied (a folder on the way cannot be entered)"
        if exc.errno == errno.ENOTDIR:
            return None, "not found (a part of the path is a file, not a folder)"
        return None, f"cannot be read ({exc.strerror or exc})"


def file_problem(path: Path | str) -> str | None:
    """None when ``path`` is a regular file this process can read (symlinks followed); else what is wrong."""
    path = Path(path)
    st, problem = _stat_problem(path)
    if st is None:
        return problem
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return f"is {_KINDS.get(stat.S_IFMT(st.st_mode), 'not a regular file')}, not a regular file"
    if not os.access(path, os.R_OK):
        return "permission denied (not readable)"
    return None


def dir_problem(path: Path | str) -> str | None:
    """None when ``path`` is a folder this process can list and enter; else what is wrong."""
    path = Path(path)
    st, problem = _stat_problem(path)
    if st is None:
        return problem
    if not stat.S_ISDIR(st.st_mode):
        return "is a file, not a folder" if stat.S_ISREG(st.st_mode) else "is not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return "permission denied (cannot list the folder)"
    return None


def require_file(path: Path | str, context: str = "") -> None:
    """Raise one PGPSError line naming ``path`` unless it is a readable regular file."""
    problem = file_problem(path)
    if problem:
        raise PGPSError(f"{path}: {problem}{context}")


def list_dir(folder: Path | str) -> list[str]:
    """The names in ``folder``, or one PGPSError line naming it."""
    problem = dir_problem(folder)
    if problem:
        raise PGPSError(f"{folder}: {problem}")
    try:
        return os.listdir(folder)
    except OSError as exc:
        raise PGPSError(f"{folder}: cannot list ({exc.strerror or exc})") from None
