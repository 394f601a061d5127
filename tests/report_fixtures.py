"""Hand-built training outputs for the evaluate/report tests, following CONTRACTS.md ("The one training
clock"): an nnU-Net fold folder (validation/summary.json, dataset.json, pgps_record.json with ``clock`` and
per-epoch ``timing_s``, pgps_config.json, codecarbon's per-stage CSV) and in-memory evaluate outputs.

Every number is chosen so the expected results can be computed independently in the tests.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

from pgps.params import load_params
from pgps.pipeline.evaluate import evaluate
from pgps.report.aggregate import FoldRun

TASK = "Task901_PGPSSynth"
DATASET = "Dataset901_PGPSSynth"
LABELS = {"background": 0, "organ": 1, "lesion": 2}
#: share of the training clock per part (sums to 1)
SHARES = {
    "network_steps": 0.6,
    "loader_wait": 0.1,
    "validation": 0.15,
    "epoch_end": 0.1,
    "stage_switch": 0.03,
    "other": 0.02,
}
START = 1_800_000_000.0


def summary(case_fg: dict[str, float], spread: float = 0.05) -> dict[str, Any]:
    """nnU-Net's summary.json: per case, organ = fg + spread and lesion = fg - spread (so the per-case
    foreground mean is exactly ``case_fg``); class means and foreground mean as nnU-Net computes them."""
    per_case = [
        {
            "reference_file": f"/x/gt_segmentations/{case}.nii.gz",
            "prediction_file": f"/x/validation/{case}.nii.gz",
            "metrics": {"1": {"Dice": fg + spread}, "2": {"Dice": fg - spread}},
        }
        for case, fg in case_fg.items()
    ]
    n = len(case_fg)
    organ = sum(fg + spread for fg in case_fg.values()) / n
    lesion = sum(fg - spread for fg in case_fg.values()) / n
    return {
        "metric_per_case": per_case,
        "mean": {"1": {"Dice": organ}, "2": {"Dice": lesion}},
        "foreground_mean": {"Dice": (organ + lesion) / 2},
    }


def record(
    epochs: int,
    epoch_s: float,
    voxel_fraction: float,
    *,
    resume_after: int | None = None,
    dead_s: float = 0.0,
    lost_s: float = 0.0,
    final_validation_s: float | None = 3.0,
) -> dict[str, Any]:
    """A run record with the one training clock. ``resume_after=k``: killed after epoch k-1's checkpoint,
    resumed ``dead_s`` later (two sessions). Each epoch's old ``wall_time`` field is deliberately 20 % short
    (it missed the epoch-end work), so a reader summing it instead of using the clock is caught."""
    entries, sessions, t = [], [], START
    splits = [(0, epochs - 1)] if resume_after is None else [(0, resume_after - 1), (resume_after, epochs - 1)]
    for first, last in splits:
        start = t
        for e in range(first, last + 1):
            entries.append(
                {
                    "epoch": e,
                    "stage": e,
                    "patch_size": [8 * (e + 1)] * 3,
                    "batch_size": 2,
                    "train_input_shapes": [{"shape": [2, 1, *([8 * (e + 1)] * 3)], "count": 6}],
                    "epoch_start": t,
                    "epoch_end": t + epoch_s,
                    "wall_time": 0.8 * epoch_s,
                    "train_loss": 1.0 - 0.1 * e,
                    "val_loss": 1.1 - 0.1 * e,
                    "pseudo_dice": [0.2 * e, 0.2 * e],
                    "mean_pseudo_dice": 0.2 * e,
                    "ema_pseudo_dice": 0.1 * e,
                    "timing_s": {k: v * epoch_s for k, v in SHARES.items() if k != "other"},
                }
            )
            t += epoch_s
        sessions.append({"first_epoch": first, "last_epoch": last, "start": start, "end": t})
        t += dead_s
    wall = epochs * epoch_s
    return {
        "trainer": "x",
        "schedule": {"voxel_fraction": voxel_fraction},
        "epochs": entries,
        "resumes": [],
        "clock": {
            "definition": "first epoch's start to the last epoch's end",
            "train_wall_s": wall,
            "dead_s": dead_s,
            "lost_s": lost_s,
            "sessions": sessions,
            "breakdown_s": {k: v * wall for k, v in SHARES.items()},
            "final_validation_s": final_validation_s,
        },
    }


def write_fold(
    run_root: Path,
    trainer_class: str,
    fold: int,
    case_fg: dict[str, float],
    *,
    epochs: int = 4,
    epoch_s: float = 10.0,
    voxel_fraction: float = 1.0,
    co2_kg: float = 1e-4,
    tracking_mode: str | None = "process",
    **clock: Any,
) -> Path:
    """The folder `pgps train` leaves: <root>/DatasetNNN/<Trainer>__nnUNetPlans__3d_fullres/fold_<k>/."""
    base = run_root / DATASET / f"{trainer_class}__nnUNetPlans__3d_fullres"
    folder = base / f"fold_{fold}"
    (folder / "validation").mkdir(parents=True)
    (base / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    (folder / "validation" / "summary.json").write_text(json.dumps(summary(case_fg)))
    (folder / "pgps_record.json").write_text(json.dumps(record(epochs, epoch_s, voxel_fraction, **clock)))
    config: dict[str, Any] = {"trainer": trainer_class}
    if tracking_mode is not None:
        config["codecarbon"] = {"country": "DEU", "tracking_mode": tracking_mode}
    (folder / "pgps_config.json").write_text(json.dumps(config))
    with (folder / "emissions_base_0000.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["task_name", "duration", "emissions", "energy_consumed", "cpu_energy", "gpu_energy", "ram_energy"]
            + ["tracking_mode", "country_iso_code", "cpu_model", "gpu_model", "codecarbon_version"]
        )
        for stage in range(2):  # two curriculum stages, half each
            writer.writerow(
                [f"stage{stage:02d}", epochs * epoch_s / 2, co2_kg / 2, 2 * co2_kg / 2, co2_kg / 2, 0.0, co2_kg / 2]
                + ["machine", "DEU", "test cpu", "", "3.3.2"]
            )
    return folder


# ------------------------------------------------------------------------------------------ a workspace
ROOT = Path(__file__).resolve().parents[1]
CASES = [f"case_{i:03d}" for i in range(8)]
BASE_CASES = [0.60, 0.62, 0.58, 0.70, 0.66, 0.61, 0.64, 0.59]
PGPS_CASES = [0.65, 0.66, 0.63, 0.73, 0.70, 0.67, 0.69, 0.64]  # all 8 better: exact two-sided p = 2/2**8
# run -> (trainer class, per-case Dice, seconds per epoch per fold (4 epochs), kg CO2 per fold, voxel fraction)
SPECS = {
    "constant": ("nnUNetTrainerConstant", BASE_CASES, [25.0, 27.5], [2e-4, 2.2e-4], 1.0),
    "pgps": ("nnUNetTrainerPGPS", PGPS_CASES, [12.5, 15.0], [1e-4, 1.1e-4], 0.4),
}


def write_params(ws: Path, folds: list[int], profile: str = "full") -> Path:
    """The repository's params.yaml with TASK, these folds, this profile and the two runs of SPECS."""
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    tree.update(profile=profile, tasks=[TASK], folds=folds)
    tree["budget"].update(epochs=4, iters_per_epoch=6)  # the hand-built runs' 4 epochs, whatever the default is
    tree["report"].pop("converged", None)  # decided by the profile, as the tests expect
    tree["trainers"] = {run: {"class": spec[0]} for run, spec in SPECS.items()}
    path = ws / "params.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def train_and_evaluate(ws: Path, folds: list[int]) -> None:
    """What `pgps train` leaves (hand-built, four cases per fold), then the real `pgps evaluate` on it."""
    params = load_params(ws / "params.yaml")
    for run, (cls, per_case, epoch_s, co2, vf) in SPECS.items():
        for fold in folds:
            cases = {CASES[i]: per_case[i] for i in range(fold * 4, fold * 4 + 4)}
            root = ws / "data" / "nnUNet_results" / TASK / run / f"fold_{fold}"
            write_fold(root, cls, fold, cases, epoch_s=epoch_s[fold], co2_kg=co2[fold], voxel_fraction=vf)
            out = ws / "results" / "runs" / TASK / run / f"fold_{fold}"
            evaluate(params, root, TASK, run, fold, ws / "raw", None, out)


# ------------------------------------------------------------------------------------------ in memory
def fold_run(
    run: str,
    trainer_class: str,
    fold: int,
    cases: dict[str, float],
    *,
    dice: float | None = None,
    train_s: float = 100.0,
    co2_kg: float | None = 1e-4,
    voxel_fraction: float = 1.0,
    iters_per_epoch: int = 6,
    epochs: int = 4,
    classes: dict[str, float] | None = None,
) -> FoldRun:
    """An evaluate output pair (metrics.json, timings.json) without files, for the aggregation and claims."""
    fg = sum(cases.values()) / len(cases) if dice is None else dice
    metrics = {
        "task": TASK,
        "run": run,
        "trainer_class": trainer_class,
        "fold": fold,
        "budget": {"epochs": epochs, "iters_per_epoch": iters_per_epoch, "val_iters": 1},
        "device": "cpu",
        "dice": fg,
        "dice_per_class": classes if classes is not None else {"organ": fg + 0.05, "lesion": fg - 0.05},
        "cases": cases,
        "epochs_run": epochs,
        "voxel_fraction": voxel_fraction,
        "curve": [
            {
                "epoch": e,
                "stage": 0,
                "patch_size": [8, 8, 8],
                "batch_size": 2,
                "patch_voxels": 512.0,
                "train_loss": 1.0,
                "val_loss": 1.0,
                "pseudo_dice": 0.1 * e,
                "ema_pseudo_dice": 0.1 * e,
            }
            for e in range(epochs)
        ],
    }
    energy = {"tracked": False} if co2_kg is None else {
        "tracked": True,
        "energy_kwh": 2 * co2_kg,
        "co2_kg": co2_kg,
        "duration_s": train_s,
        "tracking_mode": "process",
    }  # fmt: skip
    timings = {
        "train_time_s": train_s,
        "clock": {
            "train_wall_s": train_s,
            "dead_s": 0.0,
            "lost_s": 0.0,
            "final_validation_s": 1.0,
            "breakdown_s": {k: v * train_s for k, v in SHARES.items()},
            "sessions": [],
        },
        "epochs": [
            {"epoch": e, "elapsed_s": train_s * (e + 1) / epochs, "wall_time_s": train_s / epochs}
            for e in range(epochs)
        ],
        "energy": energy,
    }
    return FoldRun(fold, metrics, timings)
