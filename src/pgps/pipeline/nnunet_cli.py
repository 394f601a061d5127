"""Run nnU-Net's own console scripts (``nnUNetv2_*``) in a subprocess with the pipeline's environment.

A subprocess (not an in-process call) because nnU-Net reads ``nnUNet_raw``/``_preprocessed``/``_results``
once, at import time: each stage points them at its own (temporary) folders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pgps.errors import PGPSError
from pgps.params import Params


def script(name: str) -> str:
    """The console script next to this interpreter (the pinned venv), else the one on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise PGPSError(f"{name}: not found next to {sys.executable} or on PATH (is nnunetv2 installed?)")
    return found


def runtime_env(params: Params, **folders: Path) -> dict[str, str]:
    """os.environ plus nnU-Net's folders and the run-time knobs from params.yaml (params win)."""
    from pgps.paths import nnunet_env

    env = dict(os.environ)
    env.update({key: str(Path(value).resolve()) for key, value in folders.items()})
    env["nnUNet_extTrainer"] = nnunet_env(Path("data").resolve())["nnUNet_extTrainer"]
    env["nnUNet_compile"] = "t" if params.runtime["compile"] else "f"
    env["nnUNet_n_proc_DA"] = str(params.runtime["da_workers"])
    env["nnUNet_def_n_proc"] = str(params.num_processes)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run(cmd: list[str], env: dict[str, str], what: str) -> None:
    """Run one nnU-Net command; its output streams through; a failure is one PGPSError line."""
    print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise PGPSError(f"{what}: `{' '.join(Path(cmd[0]).name.split() + cmd[1:])}` failed (exit {proc.returncode})")
