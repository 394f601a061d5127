"""`pgps env`: shell exports so that nnU-Net's own CLI (`nnUNetv2_train -tr nnUNetTrainerPGPS`,
`nnUNetv2_predict`) finds the data folders and our trainers, with no edit to site-packages.

    eval "$(pgps env)"              # keeps nnUNet_raw/_preprocessed/_results already set
    eval "$(pgps env --data X)"     # all three under X, whatever was set before
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from pgps.paths import nnunet_env


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="put all three nnU-Net folders under this root, replacing values already set "
        "(default: keep those; unset ones go under $PGPS_DATA or ./data)",
    )
    parser.add_argument("--mkdir", action="store_true", help="create the three nnU-Net folders")


def main(args: argparse.Namespace) -> int:
    env = nnunet_env(args.data.resolve() if args.data else None)
    for key, value in env.items():
        if args.mkdir and key != "nnUNet_extTrainer":
            Path(value).mkdir(parents=True, exist_ok=True)
        print(f"export {key}={shlex.quote(value)}")
    return 0
