"""`pgps evaluate`: one run's numbers in two small JSON files, the input of `pgps report`.

The held-out fold is scored by nnU-Net itself at the end of training (sliding window at the full planned
patch -> ``fold_k/validation/summary.json``); this stage reads that (Dice per case and per class), the run
record (per-epoch curriculum, pseudo Dice, the one training clock) and codecarbon's files. What a seeded re-run
reproduces exactly goes to ``metrics.json``; what is measured (times, energy, CO2) to ``timings.json``. With
``evaluate.predict_test`` it also runs ``nnUNetv2_predict`` on the task's ``imagesTs`` and, where test labels
exist (the synthetic tasks), scores them with ``nnUNetv2_evaluate_simple``. The output folder is written
atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pgps import fileio
from pgps.params import PARAMS_FILE, Params, load_params
from pgps.pipeline import nnunet_cli
from pgps.pipeline.convert import dataset_dir
from pgps.pipeline.plan import dataset_id
from pgps.pipeline.train import fold_dir
from pgps.report import records

METRICS_NAME = "metrics.json"
TIMINGS_NAME = "timings.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_root", type=Path, help="the run's nnUNet_results root (pgps train --out)")
    parser.add_argument("--task", required=True, help="task name recorded with the metrics, e.g. Task901_PGPSSynth")
    parser.add_argument("--trainer", required=True, help="run name under `trainers` in params.yaml")
    parser.add_argument("--fold", type=int, required=True, help="cross-validation fold of the run")
    parser.add_argument("--raw-root", type=Path, required=True, help="the task's nnUNet_raw root (test images)")
    parser.add_argument("--test-labels", type=Path, default=None, help="folder of test labels, if any")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.json (+ test predictions)")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default params.yaml)")


def predict_test(
    params: Params, run_root: Path, trainer_class: str, fold: int, raw_root: Path, labels: Path | None, out: Path
) -> dict[str, Any]:
    """nnUNetv2_predict on imagesTs into ``out/test_predictions``; score against ``labels`` if present."""
    dataset = dataset_dir(raw_root)
    images = dataset / "imagesTs"
    if not images.is_dir() or not any(images.iterdir()):
        return {"predicted": 0}
    pred = out / "test_predictions"
    env = nnunet_cli.runtime_env(params, nnUNet_raw=raw_root, nnUNet_preprocessed=raw_root, nnUNet_results=run_root)
    env["nnUNet_n_proc_DA"] = str(max(1, params.runtime["da_workers"]))
    n = str(params.num_processes)
    cmd = [
        *nnunet_cli.command("nnUNetv2_predict"),
        "-i",
        str(images),
        "-o",
        str(pred),
        "-d",
        str(dataset_id(dataset)),
        "-c",
        params.configuration,
        "-tr",
        trainer_class,
        "-f",
        str(fold),
        "-device",
        params.device,
        "-npp",
        n,
        "-nps",
        n,
    ]
    if params.disable_tta:
        cmd.append("--disable_tta")
    nnunet_cli.run(cmd, env, f"{images}: test prediction")
    result: dict[str, Any] = {"predicted": len(list(pred.glob("*.nii.gz")))}
    if labels is not None and labels.is_dir() and any(labels.glob("*.nii.gz")):
        labels_json = fileio.read_json(dataset / "dataset.json")["labels"]
        fg = [str(v) for k, v in labels_json.items() if k != "background"]
        summary_path = out / "test_summary.json"
        nnunet_cli.run(
            [
                nnunet_cli.script("nnUNetv2_evaluate_simple"),
                str(labels),
                str(pred),
                "-l",
                *fg,
                "-o",
                str(summary_path),
                "-np",
                n,
            ],
            env,
            f"{labels}: test scoring",
        )
        summary = fileio.read_json(summary_path)
        result.update(
            dice=records.foreground_dice(summary, summary_path), cases=records.case_dice(summary, summary_path)
        )
    return result


def evaluate(
    params: Params, run_root: Path, task: str, name: str, fold: int, raw_root: Path, test_labels: Path | None, out: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``out/metrics.json`` (deterministic) and ``out/timings.json`` (measured); return both."""
    spec = params.trainer(name)
    folder = fold_dir(run_root, spec.trainer_class, params.configuration, fold)
    hint = "did `pgps train` finish?"
    summary_path = folder / "validation" / "summary.json"
    summary = fileio.read_json(summary_path, hint)
    record_path = folder / records.RECORD_NAME
    record = fileio.read_json(record_path, hint)
    dataset_path = folder.parent / "dataset.json"  # nnU-Net's copy of the dataset.json it trained on
    names = records.label_names(fileio.read_json(dataset_path, hint), dataset_path)
    clock = records.clock(record, record_path)  # first: an old record fails here, before anything else
    points = records.curve(record, record_path)
    metrics: dict[str, Any] = {
        "task": task,
        "run": name,
        "trainer_class": spec.trainer_class,
        "fold": fold,
        "budget": spec.budget.__dict__,
        "seed": params.seed,
        "device": params.device,
        "dice": records.foreground_dice(summary, summary_path),
        "dice_per_class": records.class_dice(summary, names, summary_path),
        "cases": records.case_dice(summary, summary_path),
        "epochs_run": len(points),
        "voxel_fraction": (record.get("schedule") or {}).get("voxel_fraction"),
        "curve": points,
    }
    timings: dict[str, Any] = {
        "train_time_s": clock["train_wall_s"],
        "clock": {k: v for k, v in clock.items() if k != "epochs"},
        "epochs": clock["epochs"],
        "energy": records.energy(folder),
    }
    fileio.clean_partials(out.parent, out.name)
    with fileio.atomic_dir(out) as tmp:
        if params.predict_test:
            metrics["test"] = predict_test(params, run_root, spec.trainer_class, fold, raw_root, test_labels, tmp)
        fileio.write_json(tmp / TIMINGS_NAME, timings, indent=2, sort_keys=True)
        fileio.write_json(tmp / METRICS_NAME, metrics, indent=2)  # label order as in dataset.json
    return metrics, timings


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    m, t = evaluate(
        params, args.run_root, args.task, args.trainer, args.fold, args.raw_root, args.test_labels, args.out
    )
    print(f"{args.task} {args.trainer} fold {args.fold}: Dice {m['dice']:.4f}, training {t['train_time_s']:.1f} s")
    return 0
