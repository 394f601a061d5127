"""The one way this project writes and reads its files.

Writes are atomic: content goes to a temp entry in the SAME directory (``.<name>.<random>.partial``), is
fsynced, and replaces the target with one ``os.replace``; the directory is fsynced after the rename. Folders
are built the same way and swapped in with one ``renameat2(RENAME_EXCHANGE)`` where Linux offers it. A
process killed at any instant (SIGKILL included) leaves either the old file/folder or the new one, never a
torn or mixed one, and leftovers are recognisable by their ``.partial`` suffix (``clean_partials`` removes
them). New entries get the mode ``open()``/``mkdir()`` would give them under the current umask.

JSON is written strict: NaN and infinities become ``null``, so every file parses with any JSON reader.
Reads raise :class:`~pgps.errors.PGPSError` naming the file and the problem (one line).

Only the standard library: the trainer package (``pip install pgps``, no pipeline extras) imports this.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pgps.errors import PGPSError

PARTIAL = ".partial"  # the suffix of every temp entry this module creates
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_EXCHANGE_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}

StrPath = str | os.PathLike[str]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: StrPath) -> None:
    """Make a rename durable (POSIX: the directory entry is data of the directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and Docker Desktop mounts) refuse fsync on directories
    finally:
        os.close(fd)


def fsync_tree(root: StrPath) -> None:
    """fsync every file and folder under ``root`` (before a folder is published by one rename)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def _temp_file(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PARTIAL, dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the mode open() would
    return Path(tmp)


def _publish(tmp: Path, target: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    fsync_dir(target.parent)


def write_with(path: StrPath, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temp file next to ``path`` (``torch.save``, ``savefig``, ...), then publish it."""
    target = Path(path)
    tmp = _temp_file(target)
    try:
        write(tmp)
        _publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: StrPath, data: bytes) -> None:
    write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: StrPath, text: str) -> None:
    write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def finite(obj: Any) -> Any:
    """``obj`` with every NaN/inf float replaced by None (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def dumps_json(obj: Any, indent: int | None = 1, sort_keys: bool = False) -> str:
    """Strict JSON text with a trailing newline (NaN/inf -> null)."""
    return json.dumps(finite(obj), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"


def write_json(path: StrPath, obj: Any, indent: int | None = 1, sort_keys: bool = False) -> None:
    write_text(path, dumps_json(obj, indent=indent, sort_keys=sort_keys))


def read_json(path: StrPath, hint: str = "") -> Any:
    """Parse a JSON file; a missing, unreadable or invalid file is one PGPSError naming it (``hint`` is
    appended to the not-found message, e.g. which step writes the file)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PGPSError(f"{p}: not found" + (f" ({hint})" if hint else "")) from None
    except UnicodeDecodeError:
        raise PGPSError(f"{p}: not valid JSON (not UTF-8 text)") from None
    except OSError as exc:
        raise PGPSError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PGPSError(f"{p}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


@contextmanager
def atomic_file(path: StrPath) -> Iterator[Path]:
    """Yield a temp path to write; it replaces ``path`` only if the block succeeds. The temp path keeps
    ``path``'s suffix last (``.x.partial.png``) for writers that pick a format by extension."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f"{PARTIAL}{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        _publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: StrPath) -> Iterator[Path]:
    """Yield a fresh temp folder next to ``path``; it replaces ``path`` (as one rename) only if the block
    succeeds, after everything in it is fsynced."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=PARTIAL, dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        fsync_tree(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def exchange(a: StrPath, b: StrPath) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or
    the filesystem cannot (nothing changed then)."""
    func = _renameat2()
    if func is None:
        return False
    sys.audit("pgps.exchange", str(a), str(b))  # lets kill-at-every-step tests stop right here
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _EXCHANGE_UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(src: StrPath, dst: StrPath) -> None:
    """Move the complete folder ``src`` to ``dst``. An old ``dst`` is swapped out in one step where the system
    can (then ``dst`` is the old or the new folder at every instant) and deleted; elsewhere it is moved aside
    first (``dst`` is then absent for the length of one rename). Leftovers are ``.partial`` entries."""
    src, dst = Path(src), Path(dst)
    if dst.exists() or dst.is_symlink():
        if exchange(src, dst):
            fsync_dir(dst.parent)
            if src.is_dir() and not src.is_symlink():
                shutil.rmtree(src, ignore_errors=True)  # the old generation, under the temp name
            else:
                src.unlink(missing_ok=True)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", suffix=PARTIAL, dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(src, dst)
        fsync_dir(dst.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
        fsync_dir(dst.parent)


def clean_partials(folder: StrPath, name: str) -> None:
    """Remove the temporaries that killed writes of ``name`` left in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for leftover in folder.glob(f".{name}.*{PARTIAL}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
