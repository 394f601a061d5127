"""The core-only install that tests/test_core_install.py checks: a fresh venv on Python 3.12 (or
3.13) with ``pip install <this checkout>`` resolving the core's ranges from the package index, and
none of the extras. Installing torch with its nvidia-* wheels writes ~6 GB and takes minutes, so
tests/conftest.py starts it in the background as soon as pytest has collected that test (which it
runs last), and the test joins it by waiting for ``result.json`` (written last, atomically). Also
``python tests/core_venv.py start``. Nothing here is a test; the file name keeps pytest from collecting it.

Why not torch without its nvidia wheels (CPU only): ``libtorch.so`` of the PyPI build links
libcudnn, libcublas, libnccl … directly, so ``import torch`` fails without them (measured, torch 2.14.1).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE_ITEMS = ("pyproject.toml", "README.md", "src")
PYTHONS = ("python3.12", "python3.13")


def source_hash() -> str:
    """What the venv was built from: the package's metadata and code."""
    digest = hashlib.sha256()
    for path in [REPO / "pyproject.toml", *sorted((REPO / "src").rglob("*"))]:
        if path.is_file() and "__pycache__" not in path.parts and ".egg-info" not in str(path):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def home() -> Path:
    """One folder per checkout (CI clones elsewhere), under the temp dir; PGPS_CORE_VENV overrides."""
    explicit = os.environ.get("PGPS_CORE_VENV")
    if explicit:
        return Path(explicit)
    tag = hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"pgps-core-venv-{tag}"


def _runs(python: str) -> bool:
    """True for an interpreter that starts and is 3.12 or 3.13 (a pyenv shim of a version that is
    not selected exists on PATH but fails)."""
    try:
        out = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.strip() in ("(3, 12)", "(3, 13)")


def find_python() -> str | None:
    """PGPS_CORE_PYTHON, else the first working python3.12 / python3.13 on PATH or under pyenv."""
    explicit = os.environ.get("PGPS_CORE_PYTHON")
    if explicit:
        return explicit
    candidates = [found for name in PYTHONS if (found := shutil.which(name))]
    candidates += [str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.1[23].*/bin/python3.1[23]"))]
    return next((c for c in candidates if _runs(c)), None)


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child of ours that nobody reaped yet is not alive
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def needs_build(folder: Path | None = None) -> bool:
    """False when a build of the current source is running or has succeeded."""
    folder = folder or home()
    state = _read_json(folder / "state.json")
    if state is None or state.get("source") != source_hash():
        return True
    result = _read_json(folder / "result.json")
    if result is not None:
        return not (result.get("ok") and (folder / "venv" / "bin" / "python").exists())
    return not pid_alive(int(state.get("pid", 0)))  # type: ignore[call-overload]


def start(folder: Path | None = None) -> Path:
    """Start a fresh build in the background and return its folder at once."""
    folder = folder or home()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with (folder / "build.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, "build", str(folder)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: pytest joins it through result.json, not as a child
            cwd=REPO,
        )
    _write_json(folder / "state.json", {"pid": proc.pid, "source": source_hash(), "started": time.time()})
    return folder


def _run(cmd: list[str], **kwargs: object) -> float:
    print("+", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]
    return time.monotonic() - t0


def build(folder: Path) -> int:
    """Create the venv and install the core into it; result.json records how it went."""
    os.nice(10)  # a background job: the CPU-bound tests running meanwhile come first
    result: dict[str, object] = {"source": source_hash(), "ok": False}
    t0 = time.monotonic()
    try:
        python = find_python()
        if python is None:
            raise RuntimeError(f"no {' or '.join(PYTHONS)} found (set PGPS_CORE_PYTHON)")
        src = folder / "src-copy"
        src.mkdir()
        for item in SOURCE_ITEMS:
            copy = shutil.copytree if (REPO / item).is_dir() else shutil.copy2
            copy(REPO / item, src / item)  # type: ignore[operator]
        venv = folder / "venv"
        result["venv_s"] = _run([python, "-m", "venv", str(venv)])
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        # the index's newest releases the ranges admit; --no-compile: no .pyc for torch's ~10k files. On CI no pip
        # cache: the ~3 GB of wheels would stay on a disk the Docker stage's image build needs at the same time.
        no_cache = ["--no-cache-dir"] if os.environ.get("CI") else []
        result["install_s"] = _run([*pip, "install", "--no-compile", *no_cache, str(src)])
        freeze = subprocess.run([*pip, "freeze"], check=True, capture_output=True, text=True).stdout
        result["packages"] = freeze.splitlines()
        result["python"] = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import platform; print(platform.python_version())"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - the test reports whatever stopped the build
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["total_s"] = time.monotonic() - t0
    _write_json(folder / "result.json", result)
    return 0 if result["ok"] else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["start"]:
        print(start(Path(argv[1]) if len(argv) > 1 else None))
        return 0
    if argv[:1] == ["build"] and len(argv) == 2:
        return build(Path(argv[1]))
    print("usage: core_venv.py start [FOLDER] | build FOLDER", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
