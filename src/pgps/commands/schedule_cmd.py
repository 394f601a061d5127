"""`pgps schedule`: inspect the curriculum before committing days of GPU time to it.

Either from a preprocessed nnU-Net dataset (``-d 42 -c 3d_fullres [-p PLANS]``: patch, poolings and
batch read from the plans file, poolings counted from the plan's ``strides`` as the trainers count
them) or from numbers typed by hand (``--patch-size … --poolings …``). Torch-free and instant.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgps.errors import PGPSError
from pgps.fileio import read_json
from pgps.nnunet.geometry import poolings_from_strides
from pgps.schedule import MODES, build_schedule, format_table
from pgps.trainer_catalog import budget_epochs, trainer_modes

DEFAULT_EPOCHS = 1000  # nnU-Net's and the trainers' (PGPS_NUM_EPOCHS) default

TRAINER_MODES: dict[str, str] = trainer_modes()  # read from src/pgps/trainers (ast: no torch, no pydantic)


@dataclass(frozen=True)
class PlanGeometry:
    patch_size: tuple[int, ...]
    poolings: tuple[int, ...]
    batch_size: int
    source: str  # "<plans file>:<configuration>"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    plan = parser.add_argument_group("from a preprocessed nnU-Net dataset (under $nnUNet_preprocessed)")
    plan.add_argument(
        "-d", "--dataset", metavar="ID", help="dataset id (42) or name (Dataset042_Foo), as nnU-Net takes"
    )
    plan.add_argument("-c", "--configuration", metavar="NAME", help="configuration in the plans, e.g. 3d_fullres or 2d")
    plan.add_argument(
        "-p", "--plans", default="nnUNetPlans", metavar="NAME", help="plans identifier (default nnUNetPlans)"
    )
    hand = parser.add_argument_group("or typed by hand")
    hand.add_argument("--patch-size", type=int, nargs="+", metavar="N", help="planned patch size, 2 or 3 axes (Z Y X)")
    hand.add_argument("--poolings", type=int, nargs="+", metavar="P", help="stride-2 poolings per axis")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs of the run (default: the budget a -tr class's name says, e.g. _250epochs, else {DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="planned batch size (default: the plan's; typed by hand: 2)"
    )
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--mode", choices=MODES, default=None, help="curriculum (default pgps)")
    how.add_argument(
        "-tr", "--trainer", choices=sorted(TRAINER_MODES), default=None, help="the curriculum of this PGPS trainer"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the rpss draws (PGPS_SEED)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def main(args: argparse.Namespace) -> int:
    geometry = _geometry(args)
    mode = TRAINER_MODES[args.trainer] if args.trainer else (args.mode or "pgps")
    batch = args.batch_size if args.batch_size is not None else geometry.batch_size
    epochs = _epochs(args.epochs, args.trainer)
    schedule = build_schedule(geometry.patch_size, geometry.poolings, epochs, batch, mode, args.seed)
    if args.json:
        print(json.dumps(schedule.to_dict()))
    else:
        if geometry.source:
            print(f"plan: {geometry.source}")
        print(format_table(schedule))
    return 0


def _epochs(explicit: int | None, trainer: str | None) -> int:
    """--epochs, or the budget in a -tr class's name; both and different: refused, as the trainer would."""
    named = budget_epochs(trainer) if trainer else None
    if explicit is not None and named is not None and explicit != named:
        raise PGPSError(f"-tr {trainer} trains {named} epochs (its name says so), not --epochs {explicit}")
    return explicit if explicit is not None else named if named is not None else DEFAULT_EPOCHS


def _geometry(args: argparse.Namespace) -> PlanGeometry:
    by_hand = args.patch_size is not None or args.poolings is not None
    if args.dataset is not None:
        if by_hand:
            raise PGPSError("--dataset reads patch and poolings from the plans: drop --patch-size/--poolings")
        return read_plan_geometry(args.dataset, args.configuration, args.plans)
    if args.configuration is not None:
        raise PGPSError("--configuration needs --dataset (-d ID)")
    if args.patch_size is None or args.poolings is None:
        raise PGPSError("give -d ID -c CONFIGURATION, or --patch-size and --poolings")
    return PlanGeometry(tuple(args.patch_size), tuple(args.poolings), 2, "")


def preprocessed_root() -> Path:
    value = os.environ.get("nnUNet_preprocessed", "")
    if not value:
        raise PGPSError('nnUNet_preprocessed is not set: eval "$(pgps env)" or export it')
    root = Path(value)
    if not root.is_dir():
        raise PGPSError(f"nnUNet_preprocessed={value}: not a folder")
    return root


def dataset_folder(root: Path, dataset: str) -> Path:
    """nnU-Net's naming: ``DatasetXXX_Name`` with a three-digit id; a full name is taken as is."""
    if dataset.isdigit():
        prefix = f"Dataset{int(dataset):03d}_"
        found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))
        if not found:
            raise PGPSError(f"{root}: no folder {prefix}* (run nnUNetv2_plan_and_preprocess -d {int(dataset)} first)")
        if len(found) > 1:
            raise PGPSError(f"{root}: dataset id {int(dataset)} is ambiguous: {', '.join(p.name for p in found)}")
        return found[0]
    folder = root / dataset
    if not folder.is_dir():
        raise PGPSError(f"{folder}: not found (give the id, e.g. -d 42, or the folder name under {root})")
    return folder


def read_plan_geometry(dataset: str, configuration: str | None, plans_name: str) -> PlanGeometry:
    folder = dataset_folder(preprocessed_root(), dataset)
    path = folder / f"{plans_name}.json"
    if not path.is_file():
        others = sorted(p.stem for p in folder.glob("*Plans*.json"))
        raise PGPSError(f"{path}: not found (plans here: {', '.join(others) or 'none'})")
    plans = read_json(path)
    configurations = plans.get("configurations") if isinstance(plans, dict) else None
    if not isinstance(configurations, dict):
        raise PGPSError(f"{path}: no 'configurations' object (not an nnU-Net plans file?)")
    if configuration is None:
        raise PGPSError(f"{path}: give -c CONFIGURATION, one of {', '.join(configurations)}")
    config = resolve_configuration(configurations, configuration, path)
    where = f"{path}: configurations.{configuration}"
    patch = _int_list(config, "patch_size", where)
    strides = config.get("architecture", {}).get("arch_kwargs", {}).get("strides")
    if not isinstance(strides, list):
        raise PGPSError(f"{where}.architecture.arch_kwargs.strides: missing (plans of nnU-Net < 2.3?)")
    poolings = poolings_from_strides(strides, len(patch), source=f"{where}.architecture.arch_kwargs.strides")
    batch = config.get("batch_size")
    if not isinstance(batch, int) or batch < 1:
        raise PGPSError(f"{where}.batch_size: expected a positive integer, got {batch!r}")
    return PlanGeometry(tuple(patch), poolings, batch, f"{path}:{configuration}")


def resolve_configuration(configurations: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    """nnU-Net's ``inherits_from``: the parent's entries, overridden by the child's (one level per step)."""
    seen: list[str] = []
    chain: list[dict[str, Any]] = []
    current: str | None = name
    while current is not None:
        if current not in configurations:
            wanted = f"configuration '{current}'" + (f" (inherited by {seen[-1]})" if seen else "")
            raise PGPSError(f"{path}: no {wanted}; has {', '.join(configurations)}")
        if current in seen:
            raise PGPSError(f"{path}: configurations inherit in a circle: {' -> '.join([*seen, current])}")
        seen.append(current)
        entry = configurations[current]
        if not isinstance(entry, dict):
            raise PGPSError(f"{path}: configurations.{current} is not an object")
        chain.append(entry)
        parent = entry.get("inherits_from")
        current = str(parent) if parent is not None else None
    merged: dict[str, Any] = {}
    for entry in reversed(chain):
        merged.update(entry)
    return merged


def _int_list(config: dict[str, Any], key: str, where: str) -> list[int]:
    value = config.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and v > 0 for v in value):
        raise PGPSError(f"{where}.{key}: expected a list of positive integers, got {value!r}")
    return value
