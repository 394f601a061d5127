"""`pgps report` on hand-made evaluate outputs: the aggregation maths, the files, the kill-safety.

The numbers here are constructed so every expected value is computed independently (statistics / scipy);
the real pipeline's report is checked in test_pipeline_dvc.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from scipy.stats import wilcoxon

from pgps.errors import PGPSError
from pgps.params import load_params
from pgps.report.build import build

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# per run, per fold: (held-out Dice, per-case Dice, train time s, kg CO2eq)
CASES = [f"case_{i:03d}" for i in range(8)]
BASE_CASES = [0.60, 0.62, 0.58, 0.70, 0.66, 0.61, 0.64, 0.59]
PGPS_CASES = [0.65, 0.66, 0.63, 0.73, 0.70, 0.67, 0.69, 0.64]  # all better: Wilcoxon p = 2/2^8


def _fold_metrics(
    run: str, cls: str, fold: int, dice: float, cases: dict[str, float], time_s: float, co2: float
) -> dict:
    curve = [
        {
            "epoch": e,
            "stage": e,
            "patch_size": [8 * (e + 1)] * 3,
            "batch_size": 2,
            "patch_voxels": float((8 * (e + 1)) ** 3),
            "wall_time_s": time_s / 4,
            "elapsed_s": time_s / 4 * (e + 1),
            "train_loss": 1.0 - 0.1 * e,
            "val_loss": 1.0 - 0.1 * e,
            "pseudo_dice": 0.2 * e,
            "ema_pseudo_dice": 0.1 * e,
        }
        for e in range(4)
    ]
    return {
        "task": "Task901_PGPSSynth",
        "run": run,
        "trainer_class": cls,
        "fold": fold,
        "dice": dice,
        "cases": cases,
        "train_time_s": time_s,
        "epochs_run": 4,
        "voxel_fraction": 0.4,
        "device": "cpu",
        "energy": {
            "tracked": True,
            "energy_kwh": co2 * 2,
            "co2_kg": co2,
            "tracking_mode": "machine",
            "cpu_model": "test cpu",
            "gpu_model": "",
        },
        "curve": curve,
    }


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    tree["folds"] = [0, 1]
    tree["trainers"] = {"constant": {"class": "nnUNetTrainerConstant"}, "pgps": {"class": "nnUNetTrainerPGPS"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    runs = tmp_path / "results" / "runs" / "Task901_PGPSSynth"
    specs = {
        "constant": ("nnUNetTrainerConstant", BASE_CASES, [0.61, 0.65], [100.0, 110.0], [2e-4, 2.2e-4]),
        "pgps": ("nnUNetTrainerPGPS", PGPS_CASES, [0.66, 0.69], [50.0, 60.0], [1e-4, 1.1e-4]),
    }
    for run, (cls, per_case, dice, times, co2) in specs.items():
        for fold in (0, 1):
            cases = {CASES[i]: per_case[i] for i in range(fold * 4, fold * 4 + 4)}
            folder = runs / run / f"fold_{fold}"
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(
                json.dumps(_fold_metrics(run, cls, fold, dice[fold], cases, times[fold], co2[fold]))
            )
    return tmp_path


def test_aggregates_over_folds_and_compares_to_baseline(workspace: Path) -> None:
    params = load_params(workspace / "params.yaml")
    build(params, workspace / "results" / "runs", workspace / "results")
    metrics = json.loads((workspace / "results" / "metrics.json").read_text())
    base, pgps = metrics["tasks"]["Task901_PGPSSynth"]["constant"], metrics["tasks"]["Task901_PGPSSynth"]["pgps"]
    assert base["dice_mean"] == pytest.approx(statistics.fmean([0.61, 0.65]))
    assert base["dice_std"] == pytest.approx(statistics.stdev([0.61, 0.65]))
    assert pgps["dice_mean"] == pytest.approx(0.675)
    assert pgps["dice_delta"] == pytest.approx(0.675 - 0.63)
    assert pgps["train_time_s"] == pytest.approx(110.0) and base["train_time_s"] == pytest.approx(210.0)
    assert pgps["time_ratio"] == pytest.approx(110.0 / 210.0)
    assert pgps["co2_ratio"] == pytest.approx(2.1e-4 / 4.2e-4)
    expected = wilcoxon(PGPS_CASES, BASE_CASES)
    assert pgps["wilcoxon_n"] == 8
    assert pgps["wilcoxon_p"] == pytest.approx(expected.pvalue) and expected.pvalue < 0.05
    assert pgps["significant"] is True and "wilcoxon_p" not in base


def test_writes_report_plots_and_plot_data(workspace: Path) -> None:
    params = load_params(workspace / "params.yaml")
    build(params, workspace / "results" / "runs", workspace / "results")
    results = workspace / "results"
    report = (results / "report.md").read_text()
    assert "| Task901_PGPSSynth | `pgps` | `nnUNetTrainerPGPS` | 2 | 0.6750 ± 0.0212 | +0.0450 |" in report
    assert "## Wilcoxon signed-rank tests" in report and "yes (better)" in report
    assert "codecarbon_tracking_mode: machine" in report and "nnunetv2==2.8.1" in report
    for png in ("learning_curves.png", "curriculum.png", "runtime_co2.png"):
        data = (results / "plots" / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    curves = (results / "plot_data" / "learning_curves.csv").read_text().splitlines()
    assert curves[0].startswith("task,run,fold,epoch,stage,elapsed_s,pseudo_dice")
    assert len(curves) == 1 + 2 * 2 * 4  # header + runs x folds x epochs
    assert not [p for p in results.rglob("*partial*")]


def test_missing_or_broken_run_is_one_clear_error(workspace: Path) -> None:
    params = load_params(workspace / "params.yaml")
    target = workspace / "results" / "runs" / "Task901_PGPSSynth" / "pgps" / "fold_1" / "metrics.json"
    target.write_text('{"dice": 0.5')
    with pytest.raises(PGPSError, match=r"pgps/fold_1/metrics\.json: not valid JSON"):
        build(params, workspace / "results" / "runs", workspace / "results")
    target.unlink()
    with pytest.raises(PGPSError, match=r"pgps/fold_1/metrics\.json: not found \(run the evaluate stage"):
        build(params, workspace / "results" / "runs", workspace / "results")
    assert not (workspace / "results" / "metrics.json").exists()


def test_killed_report_leaves_no_partial_file_as_done(workspace: Path) -> None:
    """SIGKILL while the plots render: no metrics.json (the completion mark), no half-written final file."""
    results = workspace / "results"
    cmd = [sys.executable, "-m", "pgps.cli", "report", "--runs", "results/runs", "--out", "results"]
    proc = subprocess.Popen(cmd, cwd=workspace, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    caught = False
    while time.monotonic() < deadline and proc.poll() is None:
        partial = [d for d in results.glob(".plots.*partial") if any(d.glob("*.png"))]
        if partial:
            os.kill(proc.pid, signal.SIGKILL)
            caught = True
            break
        time.sleep(0.005)
    proc.wait()
    assert caught, "the report finished before it could be killed mid-write"
    assert not (results / "metrics.json").exists()
    assert not (results / "plots").exists() and not (results / "report.md").exists()
    # the re-run completes and sweeps the killed run's temporaries
    subprocess.run(cmd, cwd=workspace, check=True, capture_output=True)
    assert json.loads((results / "metrics.json").read_text())["tasks"]["Task901_PGPSSynth"]["pgps"]["folds"] == 2
    assert sorted(p.name for p in (results / "plots").iterdir()) == [
        "curriculum.png",
        "learning_curves.png",
        "runtime_co2.png",
    ]
    assert not [p for p in results.rglob("*partial*")]
    assert math.isfinite(
        json.loads((results / "metrics.json").read_text())["tasks"]["Task901_PGPSSynth"]["constant"]["dice_mean"]
    )
