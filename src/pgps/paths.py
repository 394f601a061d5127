"""Where data lives. One root (``PGPS_DATA``, default ``./data``) holds nnU-Net's three
folders, so the DVC pipeline, the Docker image and a user's shell all agree."""

from __future__ import annotations

import os
from pathlib import Path

TRAINERS_DIR = Path(__file__).resolve().parent / "trainers"


def data_root() -> Path:
    return Path(os.environ.get("PGPS_DATA", "data")).resolve()


def nnunet_env(root: Path | None = None) -> dict[str, str]:
    """nnU-Net's own env vars (existing values win) plus ``nnUNet_extTrainer`` -> our trainers."""
    root = root or data_root()
    env = {
        "nnUNet_raw": os.environ.get("nnUNet_raw", str(root / "nnUNet_raw")),
        "nnUNet_preprocessed": os.environ.get("nnUNet_preprocessed", str(root / "nnUNet_preprocessed")),
        "nnUNet_results": os.environ.get("nnUNet_results", str(root / "nnUNet_results")),
    }
    ext = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if str(TRAINERS_DIR) not in ext:
        ext.insert(0, str(TRAINERS_DIR))
    env["nnUNet_extTrainer"] = os.pathsep.join(ext)
    return env
