"""Where data lives. One root (``PGPS_DATA``, default ``./data``) holds nnU-Net's three
folders, so the DVC pipeline, the Docker image and a user's shell all agree."""

from __future__ import annotations

import os
from pathlib import Path

TRAINERS_DIR = Path(__file__).resolve().parent / "trainers"
NNUNET_ROOTS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def data_root() -> Path:
    return Path(os.environ.get("PGPS_DATA", "data")).resolve()


def nnunet_env(root: Path | None = None) -> dict[str, str]:
    """nnU-Net's three data folders plus ``nnUNet_extTrainer`` -> our trainers.

    An explicit ``root`` puts all three folders under it, whatever the environment says (never a
    mix of an inherited ``nnUNet_raw`` and a new ``nnUNet_results``). Without one, values already
    set win, and unset ones go under :func:`data_root`.
    """
    if root is not None:
        env = {name: str(root / name) for name in NNUNET_ROOTS}
    else:
        default = data_root()
        env = {name: os.environ.get(name) or str(default / name) for name in NNUNET_ROOTS}
    ext = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if str(TRAINERS_DIR) not in ext:
        ext.insert(0, str(TRAINERS_DIR))
    env["nnUNet_extTrainer"] = os.pathsep.join(ext)
    return env
