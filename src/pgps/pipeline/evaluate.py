"""`pgps evaluate`: one run's numbers in one small JSON, the input of `pgps report`.

The held-out fold is scored by nnU-Net itself at the end of training (sliding window at the full planned
patch -> ``fold_k/validation/summary.json``); this stage reads that, the run record (per-epoch patch, pseudo
Dice, wall time) and codecarbon's ``emissions.csv``. With ``evaluate.predict_test`` it also runs
``nnUNetv2_predict`` on the task's ``imagesTs`` and, where test labels exist (the synthetic tasks), scores them
with ``nnUNetv2_evaluate_simple``. The output folder is written atomically.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

from pgps import fileio
from pgps.errors import PGPSError
from pgps.params import PARAMS_FILE, Params, load_params
from pgps.pipeline import nnunet_cli
from pgps.pipeline.convert import dataset_dir
from pgps.pipeline.plan import dataset_id
from pgps.pipeline.train import fold_dir

METRICS_NAME = "metrics.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_root", type=Path, help="the run's nnUNet_results root (pgps train --out)")
    parser.add_argument("--task", required=True)
    parser.add_argument("--trainer", required=True, help="run name under `trainers` in params.yaml")
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--raw-root", type=Path, required=True, help="the task's nnUNet_raw root (test images)")
    parser.add_argument("--test-labels", type=Path, default=None, help="folder of test labels, if any")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.json (+ test predictions)")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PGPSError(f"{path}: not found (did `pgps train` finish?)") from None
    except json.JSONDecodeError as exc:
        raise PGPSError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def _case_id(entry: dict) -> str:
    name = Path(entry.get("reference_file") or entry["prediction_file"]).name
    return name.split(".")[0]


def case_dice(summary: dict, path: Path) -> dict[str, float]:
    """Per case: mean Dice over the foreground labels (NaN labels, absent in both, skipped)."""
    try:
        cases = summary["metric_per_case"]
        out = {}
        for entry in cases:
            values = [m["Dice"] for label, m in entry["metrics"].items() if str(label) != "0"]
            values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
            out[_case_id(entry)] = sum(values) / len(values) if values else float("nan")
        return out
    except (KeyError, TypeError) as exc:
        raise PGPSError(f"{path}: unexpected nnU-Net summary layout (missing {exc})") from None


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise PGPSError(f"{path}: codecarbon wrote no rows")
    return rows


def energy(fold: Path) -> dict[str, Any]:
    """Duration, kWh and kg CO2eq of a run, and how codecarbon obtained them.

    Summed over the per-stage task rows (``emissions_<experiment>_<run_id>.csv``, one file per tracker session,
    so a resumed run counts every session) -- in task mode codecarbon's ``emissions.csv`` total row covers only
    the last task. Falls back to ``emissions.csv`` rows when no task file exists.
    """
    total_csv = fold / "emissions.csv"
    task_csvs = sorted(p for p in fold.glob("emissions_*.csv") if p.name != "emissions.csv")
    sources = task_csvs or ([total_csv] if total_csv.is_file() else [])
    if not sources:
        return {"tracked": False}
    rows = [row for path in sources for row in _read_rows(path)]

    def total(column: str) -> float:
        try:
            return sum(float(r.get(column) or 0.0) for r in rows)
        except ValueError as exc:
            raise PGPSError(f"{sources[0]}: column {column}: {exc}") from None

    last = rows[-1]
    return {
        "tracked": True,
        "source": "per-stage tasks" if task_csvs else "emissions.csv",
        "duration_s": total("duration"),
        "energy_kwh": total("energy_consumed"),
        "co2_kg": total("emissions"),
        "cpu_energy_kwh": total("cpu_energy"),
        "gpu_energy_kwh": total("gpu_energy"),
        "ram_energy_kwh": total("ram_energy"),
        "sessions": len(sources),
        "tracking_mode": _tracking_mode(total_csv) or last.get("tracking_mode", ""),
        "country_iso_code": last.get("country_iso_code", ""),
        "cpu_model": last.get("cpu_model", ""),
        "gpu_model": last.get("gpu_model", ""),
        "codecarbon_version": last.get("codecarbon_version", ""),
    }


def _tracking_mode(total_csv: Path) -> str:
    """codecarbon's tracking_mode column lives in emissions.csv (the task rows omit it)."""
    if not total_csv.is_file():
        return ""
    return _read_rows(total_csv)[-1].get("tracking_mode", "")


def _mean_voxels(shapes: list[dict], fallback: list[int]) -> float:
    """Average voxels per training sample over an epoch, from the batches the network actually saw."""
    total = sum(item["count"] for item in shapes)
    if not total:
        return float(math.prod(fallback))
    return sum(math.prod(item["shape"][2:]) * item["count"] for item in shapes) / total


def curve(record: dict, path: Path) -> list[dict]:
    """Per-epoch points for the learning-curve and curriculum plots."""
    try:
        points, elapsed = [], 0.0
        for e in sorted(record["epochs"], key=lambda e: e["epoch"]):
            elapsed += float(e["wall_time"])
            points.append(
                {
                    "epoch": int(e["epoch"]),
                    "stage": int(e["stage"]),
                    "patch_size": list(e["patch_size"]),
                    "batch_size": int(e["batch_size"]),
                    "patch_voxels": _mean_voxels(e.get("train_input_shapes") or [], e["patch_size"]),
                    "wall_time_s": float(e["wall_time"]),
                    "elapsed_s": elapsed,
                    "train_loss": float(e["train_loss"]),
                    "val_loss": float(e["val_loss"]),
                    "pseudo_dice": float(e.get("mean_pseudo_dice", sum(e["pseudo_dice"]) / len(e["pseudo_dice"]))),
                    "ema_pseudo_dice": float(e["ema_pseudo_dice"]),
                }
            )
        return points
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        raise PGPSError(f"{path}: unexpected run-record layout (missing {exc})") from None


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
        nnunet_cli.script("nnUNetv2_predict"),
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
        labels_json = _load_json(dataset / "dataset.json")["labels"]
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
        summary = _load_json(summary_path)
        result.update(dice=float(summary["foreground_mean"]["Dice"]), cases=case_dice(summary, summary_path))
    return result


def evaluate(
    params: Params, run_root: Path, task: str, name: str, fold: int, raw_root: Path, test_labels: Path | None, out: Path
) -> dict[str, Any]:
    spec = params.trainer(name)
    folder = fold_dir(run_root, spec.trainer_class, params.configuration, fold)
    summary_path = folder / "validation" / "summary.json"
    summary = _load_json(summary_path)
    record_path = folder / "pgps_record.json"
    record = _load_json(record_path)
    points = curve(record, record_path)
    try:
        dice = float(summary["foreground_mean"]["Dice"])
    except (KeyError, TypeError):
        raise PGPSError(f"{summary_path}: no foreground_mean.Dice") from None
    metrics: dict[str, Any] = {
        "task": task,
        "run": name,
        "trainer_class": spec.trainer_class,
        "fold": fold,
        "budget": spec.budget.__dict__,
        "seed": params.seed,
        "device": params.device,
        "dice": dice,
        "cases": case_dice(summary, summary_path),
        "train_time_s": sum(p["wall_time_s"] for p in points),
        "epochs_run": len(points),
        "voxel_fraction": record.get("schedule", {}).get("voxel_fraction"),
        "energy": energy(folder),
        "curve": points,
    }
    fileio.clean_partials(out.parent, out.name)
    with fileio.atomic_dir(out) as tmp:
        if params.predict_test:
            metrics["test"] = predict_test(params, run_root, spec.trainer_class, fold, raw_root, test_labels, tmp)
        fileio.write_json(tmp / METRICS_NAME, metrics, indent=2, sort_keys=True)
    return metrics


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    m = evaluate(params, args.run_root, args.task, args.trainer, args.fold, args.raw_root, args.test_labels, args.out)
    print(f"{args.task} {args.trainer} fold {args.fold}: Dice {m['dice']:.4f}, train time {m['train_time_s']:.1f} s")
    return 0
