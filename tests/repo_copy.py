"""What a fresh clone sees: the repository's tracked + untracked-but-not-ignored files, copied into a
new git repository with one commit (DVC and `pgps reproduce` run there, never in the working tree); and such a
copy with some stages already run, shared by the tests of one session."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def copy_repository(dst: Path) -> Path:
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    git = ["git", "-c", "user.email=ci@pgps", "-c", "user.name=ci"]
    subprocess.run([*git, "init", "-q"], cwd=dst, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "fresh copy"], cwd=dst, check=True)
    return dst


def calm_shell() -> dict[str, str]:
    """The caller's environment minus everything the pipeline strips anyway, this venv first on PATH."""
    from pgps.pipeline.nnunet_cli import stripped

    env = {k: v for k, v in os.environ.items() if not stripped(k)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def once_per_session(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """``basetemp/name``, made by ``make(folder)`` once per test session: the first caller makes it under a file
    lock, later callers wait for it and get it as made. Read-only for its users (take a :func:`private_copy`)."""
    return once(tmp_path_factory.getbasetemp(), name, make)


def once(base: Path, name: str, make: Callable[[Path], None]) -> Path:
    """``base/name``, made by ``make(folder)`` by the first caller under a file lock (threads and processes alike);
    later callers wait for it and get it as made."""
    root, done = base / name, base / f"{name}.done"
    with (base / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            shutil.rmtree(root, ignore_errors=True)  # a half-made one of an interrupted session
            make(root)
            done.touch()
    return root


def dvc_repro(root: Path, targets: Sequence[str], env: dict[str, str]) -> None:
    """``dvc repro TARGETS`` in ``root``; a failure shows DVC's output."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "repro", *targets],
        cwd=root, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, f"dvc repro {' '.join(targets)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def prepared_repository(tmp_path_factory: pytest.TempPathFactory, *targets: str) -> Path:
    """A fresh copy of the repository (its params.yaml: the default profile) with ``dvc repro TARGETS`` run from a
    calm shell, made once per test session and shared (CI time: the default task's acquire, convert and plan took
    ~60 s on 2 busy cores, and two tests need them)."""

    def make(root: Path) -> None:
        root.mkdir()
        copy_repository(root)
        dvc_repro(root, targets, calm_shell())

    key = hashlib.sha256("\0".join(targets).encode()).hexdigest()[:10]
    return once_per_session(tmp_path_factory, f"prepared-{key}", make)


def private_copy(prepared: Path, dest: Path) -> Path:
    """A copy of a prepared repository that a test may change (the git repository, DVC's cache and lock with it):
    ``cp -a``, so outputs stay hard links into the copy's own DVC cache (a Python copytree stored every checkpoint
    twice)."""
    subprocess.run(["cp", "-a", str(prepared), str(dest)], check=True)
    return dest
