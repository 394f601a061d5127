"""The grid's state file ``<folder>/grid.json``: which job runs which DVC stage, so `pgps grid status`
can find the jobs again from any shell. Written atomically (temp file in the same directory + rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pgps.errors import PGPSError

STATE_NAME = "grid.json"
DEFAULT_FOLDER = Path("logs/grid")


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_state(folder: Path, state: dict[str, Any]) -> Path:
    path = folder / STATE_NAME
    write_json(path, state)
    return path


def load_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_NAME
    if not path.is_file():
        raise PGPSError(f"{path}: no grid submitted here yet (run `pgps grid submit` first, or pass --folder)")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PGPSError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(state, dict) or "jobs" not in state or "executor" not in state:
        raise PGPSError(f"{path}: not a grid state file (no 'jobs'/'executor')")
    return state
