"""`pgps train`: one (task, run, fold) of the grid with nnU-Net's own ``nnUNetv2_train``.

``--out`` becomes this run's own ``nnUNet_results`` root (``DatasetNNN_Name/<Trainer>__nnUNetPlans__<conf>/
fold_K`` inside, the layout ``nnUNetv2_predict`` expects), because several runs of the grid share one trainer
class (the reduced-budget constant baselines) and nnU-Net's layout could not tell them apart.

Crash safety: nnU-Net trains into ``.<out>.<key>.partial`` next to ``--out``; only a finished run (final
checkpoint + validation summary) is renamed to ``--out``. If the stage is killed, ``dvc repro`` runs it again
and training resumes from the partial run's latest checkpoint (``--c``) -- but only when ``<key>``, a hash of
everything that determines the run (trainer, device, every PGPS_* knob and runtime variable, plans, split), is
unchanged. nnU-Net runs in the hermetic environment of :func:`pgps.pipeline.nnunet_cli.runtime_env`: nothing
exported in the caller's shell changes the run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from pgps import fileio
from pgps.errors import PGPSError
from pgps.params import PARAMS_FILE, Params, TrainerSpec, load_params
from pgps.pipeline import nnunet_cli
from pgps.pipeline.convert import dataset_dir
from pgps.pipeline.plan import dataset_id
from pgps.pipeline.run_settings import run_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trainer", required=True, help="run name under `trainers` in params.yaml")
    parser.add_argument("--fold", type=int, required=True, help="cross-validation fold (0-4)")
    parser.add_argument("--preprocessed", type=Path, required=True, help="the task's nnUNet_preprocessed root")
    parser.add_argument("--out", type=Path, required=True, help="this run's nnUNet_results root")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default params.yaml)")


def fold_dir(results_root: Path, trainer_class: str, configuration: str, fold: int) -> Path:
    """``<root>/DatasetNNN_Name/<Trainer>__nnUNetPlans__<conf>/fold_<k>`` (nnU-Net's layout)."""
    return dataset_dir(results_root) / f"{trainer_class}__nnUNetPlans__{configuration}" / f"fold_{fold}"


def run_key(params: Params, spec: TrainerSpec, fold: int, dataset: Path) -> str:
    """A hash of what determines the run, so a partial run is resumed only by the same run: the trainer, the
    device, the configuration, the fold, every variable of its environment that params.yaml sets (the whole
    budget, seed, runtime: :func:`run_settings`), and the plans, split and dataset description."""
    h = hashlib.sha256()
    identity = [spec.trainer_class, params.device, params.configuration, fold, run_settings(params, spec)]
    h.update(json.dumps(identity, sort_keys=True).encode())
    for name in ("nnUNetPlans.json", "splits_final.json", "dataset.json"):
        if (dataset / name).is_file():
            h.update((dataset / name).read_bytes())
    return h.hexdigest()[:12]


def train(params: Params, name: str, fold: int, preprocessed: Path, out: Path) -> Path:
    """Train one run into ``out`` (atomically); return its fold directory."""
    spec = params.trainer(name)
    if fold not in range(5):
        raise PGPSError(f"--fold {fold}: nnU-Net's split has folds 0..4")
    dataset = dataset_dir(preprocessed)
    out = Path(out)
    key = run_key(params, spec, fold, dataset)
    partial = out.parent / f".{out.name}.{key}.partial"
    for stale in out.parent.glob(f".{out.name}.*.partial"):
        if stale != partial:  # another configuration's leftovers: never resume from them
            shutil.rmtree(stale, ignore_errors=True)
    partial.mkdir(parents=True, exist_ok=True)
    resume = any(partial.glob(f"Dataset*/*/fold_{fold}/checkpoint_*.pth"))

    env = nnunet_cli.runtime_env(
        params, spec, nnUNet_raw=preprocessed, nnUNet_preprocessed=preprocessed, nnUNet_results=partial
    )
    cmd = [
        *nnunet_cli.command("nnUNetv2_train"),
        str(dataset_id(dataset)),
        params.configuration,
        str(fold),
        "-tr",
        spec.trainer_class,
        "-device",
        params.device,
    ]
    if resume:
        print(f"resuming the interrupted run in {partial}", flush=True)
        cmd.append("--c")
    nnunet_cli.run(cmd, env, f"{out}: training {name} ({spec.trainer_class}) fold {fold}")

    done = fold_dir(partial, spec.trainer_class, params.configuration, fold)
    for required in ("checkpoint_final.pth", "validation/summary.json"):
        if not (done / required).is_file():
            raise PGPSError(f"{done / required}: missing after training; the run is incomplete (kept for resume)")
    fileio.replace_dir(partial, out)
    return fold_dir(out, spec.trainer_class, params.configuration, fold)


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    folder = train(params, args.trainer, args.fold, args.preprocessed, args.out)
    print(f"trained {args.trainer} fold {args.fold} -> {folder}")
    return 0
