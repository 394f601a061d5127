"""The grid's state file ``<folder>/grid.json``: which job runs which DVC stage, so `pgps grid status`
can find the jobs again from any shell. Written atomically (pgps.fileio)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgps import fileio
from pgps.errors import PGPSError

STATE_NAME = "grid.json"
DEFAULT_FOLDER = Path("logs/grid")


def save_state(folder: Path, state: dict[str, Any]) -> Path:
    path = folder / STATE_NAME
    fileio.write_json(path, state)
    return path


def load_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_NAME
    if not path.is_file():
        raise PGPSError(f"{path}: no grid submitted here yet (run `pgps grid submit` first, or pass --folder)")
    state = fileio.read_json(path)
    if not isinstance(state, dict) or "jobs" not in state or "executor" not in state:
        raise PGPSError(f"{path}: not a grid state file (no 'jobs'/'executor')")
    return state
