"""Build a task folder aside and swap it in so that the old one is never missing, even for an instant.

``pgps.fileio.atomic_dir`` publishes with two renames (old folder aside, new folder in): a process killed between
them leaves no task folder at all. On Linux ``renameat2(RENAME_EXCHANGE)`` swaps the two folders in one step, so
at every instant the task folder is the old generation or the new one; the old one then sits under the temp
name (``.<name>.<random>.partial``) until it is deleted, and ``clean_partials`` removes it if the process dies
first. Where the call is missing (not Linux, old C library) or the filesystem refuses it, the two renames of
``pgps.fileio.replace_dir`` are used.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pgps.fileio import PARTIAL, _fsync_dir, fsync_tree, replace_dir

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}


def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where the system cannot (nothing changed then)."""
    func = _renameat2()
    if func is None:
        return False
    sys.audit("pgps.exchange", str(a), str(b))  # lets the kill-at-every-step test stop right here
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(new: Path, target: Path) -> None:
    """Make the complete folder ``new`` the ``target``; an old ``target`` is exchanged out, then deleted."""
    if (target.exists() or target.is_symlink()) and exchange(new, target):
        _fsync_dir(target.parent)
        if new.is_dir() and not new.is_symlink():
            shutil.rmtree(new, ignore_errors=True)  # the old generation, under the temp name
        else:
            new.unlink(missing_ok=True)
        return
    replace_dir(new, target)


@contextmanager
def building(target: Path) -> Iterator[Path]:
    """Yield an empty temp folder beside ``target``; on success it is fsynced and swapped in, else removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=PARTIAL, dir=target.parent))
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; give the folder the mode mkdir would
        fsync_tree(tmp)
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
