"""`pgps plan RAWROOT --out ROOT`: nnU-Net's own fingerprint, planner and preprocessing for one task.

``RAWROOT`` is the task's nnU-Net raw root written by `pgps convert`; ``ROOT`` becomes this task's own
``nnUNet_preprocessed`` folder. Planned in a temp folder that replaces ``ROOT`` only when complete.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pgps import fileio
from pgps.errors import PGPSError
from pgps.params import PARAMS_FILE, load_params
from pgps.pipeline import nnunet_cli
from pgps.pipeline.convert import dataset_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("raw_root", type=Path, help="the task's nnUNet_raw root (from pgps convert)")
    parser.add_argument("--out", type=Path, required=True, help="this task's nnUNet_preprocessed root")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default params.yaml)")


def dataset_id(dataset: Path) -> int:
    return int(dataset.name[len("Dataset") : len("Dataset") + 3])


def write_split(dataset: Path, configuration: str) -> Path:
    """nnU-Net's own seeded 5-fold split, written here so training never modifies this stage's output.

    (nnU-Net's trainer writes ``splits_final.json`` into the preprocessed folder on first use, which would make
    DVC see the plan stage's output as changed after every training.)
    """
    import numpy as np
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    plans = json.loads((dataset / "nnUNetPlans.json").read_text())
    folder = dataset / plans["configurations"][configuration]["data_identifier"]
    identifiers = infer_dataset_class(str(folder)).get_identifiers(str(folder))
    if len(identifiers) < 5:
        raise PGPSError(f"{folder}: {len(identifiers)} training cases; nnU-Net's 5-fold split needs at least 5")
    splits = generate_crossval_split(list(np.sort(identifiers)), seed=12345, n_splits=5)  # as nnU-Net's do_split
    path = dataset / "splits_final.json"
    fileio.write_json(path, splits, indent=2, sort_keys=True)
    return path


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    dataset = dataset_dir(args.raw_root)
    fileio.clean_partials(Path(args.out).parent, Path(args.out).name)
    with fileio.atomic_dir(Path(args.out)) as tmp:
        env = nnunet_cli.runtime_env(params, nnUNet_raw=args.raw_root, nnUNet_preprocessed=tmp)
        # the planner calls torch.set_num_threads(nnUNet_n_proc_DA): 0 (right for CPU training) crashes it
        env["nnUNet_n_proc_DA"] = str(max(1, params.num_processes))
        np = str(params.num_processes)
        cmd = [
            nnunet_cli.script("nnUNetv2_plan_and_preprocess"),
            "-d",
            str(dataset_id(dataset)),
            "-c",
            params.configuration,
            "--verify_dataset_integrity",
            "-npfp",
            np,
            "-np",
            np,
        ]
        nnunet_cli.run(cmd, env, f"{dataset}: planning")
        planned = dataset_dir(tmp)
        if not (planned / "nnUNetPlans.json").is_file():
            raise PGPSError(f"{dataset}: nnU-Net's planner wrote no nnUNetPlans.json")
        write_split(planned, params.configuration)
    print(f"planned {dataset.name} -> {args.out}")
    return 0
