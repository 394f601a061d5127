"""`pgps convert RAW --out ROOT`: MSD layout -> nnU-Net raw dataset, with nnU-Net's own converter.

``ROOT`` is this task's own ``nnUNet_raw`` folder (it will hold exactly one ``DatasetNNN_Name``), so DVC
can track each task's conversion as one output. The converter writes into a temp folder next to ``ROOT``
that replaces it only when complete: a killed stage never leaves a half-converted dataset behind.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pgps import fileio
from pgps.errors import PGPSError
from pgps.params import PARAMS_FILE, load_params
from pgps.pipeline import nnunet_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("raw", type=Path, help="MSD-layout task folder, e.g. data/raw/Task901_PGPSSynth")
    parser.add_argument("--out", type=Path, required=True, help="this task's nnUNet_raw root")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default params.yaml)")


def dataset_dir(root: Path) -> Path:
    """The single ``DatasetNNN_Name`` folder inside a per-task nnU-Net root."""
    found = sorted(p for p in Path(root).glob("Dataset[0-9][0-9][0-9]_*") if p.is_dir())
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise PGPSError(f"{root}: expected exactly one DatasetNNN_Name folder, found {names}")
    return found[0]


def convert(raw: Path, out: Path, num_processes: int, env: dict[str, str]) -> Path:
    """Convert ``raw`` into ``out``/DatasetNNN_Name atomically; return the dataset folder."""
    raw = Path(raw)
    if not (raw / "dataset.json").is_file():
        raise PGPSError(f"{raw / 'dataset.json'}: not found (run `pgps acquire` first)")
    if raw.name.count("_") != 1 or not raw.name.startswith("Task"):
        raise PGPSError(f"{raw}: nnU-Net's MSD converter needs a folder named TaskNN_Name with exactly one '_'")
    fileio.clean_partials(Path(out).parent, Path(out).name)
    with fileio.atomic_dir(Path(out)) as tmp:
        env = dict(env, nnUNet_raw=str(tmp.resolve()))
        cmd = [nnunet_cli.script("nnUNetv2_convert_MSD_dataset"), "-i", str(raw.resolve()), "-np", str(num_processes)]
        nnunet_cli.run(cmd, env, f"{raw}: conversion")
        produced = dataset_dir(tmp)
        if not (produced / "dataset.json").is_file():
            raise PGPSError(f"{raw}: nnU-Net's converter wrote no dataset.json")
    return dataset_dir(Path(out))


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    dataset = convert(args.raw, args.out, params.num_processes, nnunet_cli.runtime_env(params))
    print(f"converted {args.raw} -> {dataset}")
    return 0
