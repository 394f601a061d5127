"""`pgps evaluate` + `pgps report` on hand-made training outputs (tests/report_fixtures.py, the run record as
CONTRACTS.md defines it): the one training clock, the split of deterministic and measured numbers, the files,
one-fold tables, the README table, bad input, the kill-safety.

The numbers are constructed so every expected value is computed independently here (statistics, literals);
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pgps.errors import PGPSError
from pgps.params import load_params
from pgps.pipeline.evaluate import evaluate
from pgps.report.build import build, convergence
from pgps.report.tables import readme_table
from report_fixtures import BASE_CASES, CASES, PGPS_CASES, TASK, train_and_evaluate, write_fold, write_params
from report_fixtures import record as run_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNGS = ["curriculum.png", "learning_curves.png", "runtime_co2.png", "time_breakdown.png"]


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    write_params(tmp_path, [0, 1])
    train_and_evaluate(tmp_path, [0, 1])
    return tmp_path


def _build(ws: Path) -> None:
    build(load_params(ws / "params.yaml"), ws / "results" / "runs", ws / "results")


def _fold_mean(values: list[float]) -> float:
    return statistics.fmean(values)


def _numbers_only(obj: Any) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _numbers_only(v) for k, v in obj.items())
    if isinstance(obj, bool) or isinstance(obj, str) or isinstance(obj, list):
        return False
    return obj is None or (isinstance(obj, int | float) and math.isfinite(obj))


def _keys(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


# ------------------------------------------------------------------------------------------ evaluate
def test_evaluate_takes_the_training_clock_and_keeps_times_apart(workspace: Path) -> None:
    folder = workspace / "results" / "runs" / TASK / "pgps" / "fold_0"
    metrics = json.loads((folder / "metrics.json").read_text())
    timings = json.loads((folder / "timings.json").read_text())
    # the clock's train_wall_s (4 epochs x 12.5 s), not the sum of the epochs' old wall_time (80 % of it)
    assert timings["train_time_s"] == pytest.approx(50.0)
    assert timings["clock"]["final_validation_s"] == pytest.approx(3.0)
    assert timings["clock"]["breakdown_s"]["network_steps"] == pytest.approx(0.6 * 50.0)
    assert [e["elapsed_s"] for e in timings["epochs"]] == pytest.approx([12.5, 25.0, 37.5, 50.0])
    assert timings["epochs"][0]["timing_s"]["loader_wait"] == pytest.approx(1.25)
    assert timings["energy"]["co2_kg"] == pytest.approx(1e-4)
    assert (timings["energy"]["tracking_mode"], timings["energy"]["tracking_mode_source"]) == (
        "process",
        "pgps_config.json",
    )
    # metrics.json holds what a seeded re-run reproduces, nothing measured
    measured = {"train_time_s", "wall_time_s", "elapsed_s", "timing_s", "clock", "energy", "co2_kg", "duration_s"}
    assert not measured & _keys(metrics)
    fg = _fold_mean(PGPS_CASES[:4])
    assert metrics["dice"] == pytest.approx(fg)
    assert metrics["dice_per_class"] == {"organ": pytest.approx(fg + 0.05), "lesion": pytest.approx(fg - 0.05)}
    assert metrics["cases"] == {CASES[i]: pytest.approx(PGPS_CASES[i]) for i in range(4)}
    assert [p["patch_voxels"] for p in metrics["curve"]] == [512.0, 4096.0, 13824.0, 32768.0]
    assert metrics["voxel_fraction"] == 0.4 and metrics["epochs_run"] == 4


def test_evaluate_resumed_run_counts_sessions_not_the_dead_time(tmp_path: Path) -> None:
    write_params(tmp_path, [0])
    root = tmp_path / "run"
    write_fold(root, "nnUNetTrainerPGPS", 0, {"a": 0.5}, epoch_s=10.0, resume_after=2, dead_s=500.0, lost_s=7.0)
    _, timings = evaluate(load_params(tmp_path / "params.yaml"), root, TASK, "pgps", 0, tmp_path, None, tmp_path / "o")
    assert timings["train_time_s"] == pytest.approx(40.0)
    assert (timings["clock"]["dead_s"], timings["clock"]["lost_s"]) == (500.0, 7.0)
    assert [e["elapsed_s"] for e in timings["epochs"]] == pytest.approx([10.0, 20.0, 30.0, 40.0])
    assert [e["wall_time_s"] for e in timings["epochs"]] == pytest.approx([10.0] * 4)


def test_evaluate_refuses_a_record_without_clock(tmp_path: Path) -> None:
    """An old run (no clock): one line naming the record, nothing written, no silent fallback."""
    write_params(tmp_path, [0])
    root = tmp_path / "run"
    fold = write_fold(root, "nnUNetTrainerPGPS", 0, {"a": 0.5})
    record = json.loads((fold / "pgps_record.json").read_text())
    del record["clock"]
    (fold / "pgps_record.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    with pytest.raises(PGPSError, match=r"fold_0/pgps_record\.json: no 'clock'"):
        evaluate(load_params(tmp_path / "params.yaml"), root, TASK, "pgps", 0, tmp_path, None, out)
    assert not out.exists()
    cmd = [sys.executable, "-m", "pgps.cli", "evaluate", str(root), "--task", TASK, "--trainer", "pgps"]
    cmd += ["--fold", "0", "--raw-root", str(tmp_path), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "pgps_record.json: no 'clock'" in proc.stderr and not out.exists()
    # a clock whose parts do not add up is refused as well
    record["clock"] = run_record(4, 10.0, 1.0)["clock"]
    record["clock"]["breakdown_s"]["other"] += 5.0
    (fold / "pgps_record.json").write_text(json.dumps(record))
    with pytest.raises(PGPSError, match=r"pgps_record\.json: clock\.breakdown_s sums to 45\.000"):
        evaluate(load_params(tmp_path / "params.yaml"), root, TASK, "pgps", 0, tmp_path, None, out)


def test_tracking_mode_falls_back_to_codecarbon_rows(tmp_path: Path) -> None:
    write_params(tmp_path, [0])
    root = tmp_path / "run"
    write_fold(root, "nnUNetTrainerPGPS", 0, {"a": 0.5}, tracking_mode=None)
    _, timings = evaluate(load_params(tmp_path / "params.yaml"), root, TASK, "pgps", 0, tmp_path, None, tmp_path / "o")
    assert timings["energy"]["tracking_mode"] == "machine"
    assert timings["energy"]["tracking_mode_source"] == "emissions_base_0000.csv"


# ------------------------------------------------------------------------------------------ report
def test_metrics_json_is_numbers_only_and_deterministic(workspace: Path) -> None:
    _build(workspace)
    metrics = json.loads((workspace / "results" / "metrics.json").read_text())
    assert _numbers_only(metrics), metrics
    base, pgps = metrics[TASK]["constant"], metrics[TASK]["pgps"]
    base_folds = [_fold_mean(BASE_CASES[:4]), _fold_mean(BASE_CASES[4:])]
    pgps_folds = [_fold_mean(PGPS_CASES[:4]), _fold_mean(PGPS_CASES[4:])]
    assert base["dice_folds"] == {"fold_0": pytest.approx(base_folds[0]), "fold_1": pytest.approx(base_folds[1])}
    assert base["dice_mean"] == pytest.approx(statistics.fmean(base_folds))
    assert base["dice_std"] == pytest.approx(statistics.stdev(base_folds))
    assert pgps["dice_delta"] == pytest.approx(statistics.fmean(pgps_folds) - statistics.fmean(base_folds))
    assert pgps["p_holm"] == pytest.approx(2 / 2**8) and pgps["significance"] == 1
    # a handful per run (dvc metrics show): per class, raw p, voxel fraction and epochs are report.md's
    assert set(base) == {"dice_mean", "dice_std", "dice_folds"}
    assert set(pgps) == {"dice_mean", "dice_std", "dice_folds", "dice_delta", "p_holm", "significance"}
    timings = json.loads((workspace / "results" / "timings.json").read_text())
    t = timings["tasks"][TASK]["pgps"]
    assert t["train_time_s"] == pytest.approx(110.0) and timings["tasks"][TASK]["constant"]["train_time_s"] == 210.0
    assert t["time_ratio"] == pytest.approx(110 / 210)
    assert t["time_ratio_folds"] == {"0": pytest.approx(0.5), "1": pytest.approx(60 / 110)}
    assert t["co2_ratio"] == pytest.approx(2.1e-4 / 4.2e-4)
    assert t["final_validation_s"] == pytest.approx(6.0) and t["dead_s"] == 0.0
    assert timings["codecarbon_tracking_modes"] == ["process"]


def test_report_opens_with_the_claims_and_has_the_paper_table(workspace: Path) -> None:
    _build(workspace)
    results = workspace / "results"
    report = (results / "report.md").read_text()
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Claims", headings
    assert "Below convergence" not in report  # profile full
    claims = report.split("## Claims")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in claims.splitlines() if line.startswith("| ")}
    dice_row = rows["Dice equal to or better than the constant-patch baseline: no significant decrease"]
    assert "| holds |" in dice_row and "significantly better on 1, worse on 0 of 1 task" in dice_row
    time_row = rows["training time about 50 % of the baseline's (one training clock)"]
    assert "| holds |" in time_row and "0.52 ± 0.03 (mean ± std of 2 task×fold pairs" in time_row
    assert (
        "| not testable at this size |"
        in rows["better Dice than the baseline on most tasks (paper: 7 of 10 MSD tasks)"]
    )
    assert "one task cannot say 'most tasks'" in report
    assert "the grid has no constant-patch run with a reduced budget" in report
    # task x method table: best bold, significance mark, summary rows
    assert "| Task901_PGPSSynth | 0.6250 ± 0.0000 | **0.6713 ± 0.0053** ↑ |" in report
    assert "| higher Dice than `constant` (tasks) | — | 1 of 1 |" in report
    assert "| training time vs `constant` (mean ratio over tasks) | 1.00 | 0.52 |" in report
    assert "## Per-class Dice (multi-label tasks)" in report and "| run | organ | lesion | foreground mean |" in report
    assert "## Statistical tests" in report and "| better | n=8 |" in report
    assert "### Where the training time went" in report and "| 66.0 (60 %) |" in report
    assert "codecarbon tracking mode: process" in report and "nnunetv2==2.8.1" in report
    for png in PNGS:
        data = (results / "plots" / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
        assert f"(plots/{png})" in report
    curves = (results / "plot_data" / "learning_curves.csv").read_text().splitlines()
    assert curves[0].startswith("task,run,fold,epoch,stage,elapsed_s,pseudo_dice")
    assert len(curves) == 1 + 2 * 2 * 4  # header + runs x folds x epochs
    assert not [p for p in results.rglob("*partial*")]


def test_html_is_one_self_contained_page_with_the_same_content(workspace: Path) -> None:
    _build(workspace)
    page = (workspace / "results" / "report.html").read_text()
    assert page.count("<img ") == len(PNGS) and page.count('src="data:image/png;base64,') == len(PNGS)
    for needle in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert needle not in page.replace("http-equiv", ""), needle
    assert "<h2>Claims</h2>" in page and "verdict-holds" in page and "0.6713 ± 0.0053" in page


def test_one_fold_has_no_spread(tmp_path: Path) -> None:
    write_params(tmp_path, [0], profile="smoke")
    train_and_evaluate(tmp_path, [0])
    _build(tmp_path)
    metrics = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert metrics[TASK]["pgps"]["dice_std"] is None and _numbers_only(metrics)
    report = (tmp_path / "results" / "report.md").read_text()
    assert "± 0.0000" not in report and "0.6675 ± n/a" in report
    budget = load_params(tmp_path / "params.yaml").budget
    banner = f"> **Below convergence: profile `smoke`, {budget.epochs} epochs x {budget.iters_per_epoch} iterations"
    assert report.splitlines()[2].startswith(banner)
    # one fold on one task, 4 cases, below convergence: nothing the paper claims is testable here
    claims = report.split("## Claims")[1].split("\n## ")[0]
    assert claims.count("| not testable at this size |") == 5
    assert "one fold on one task gives one ratio and no spread" in claims
    html = (tmp_path / "results" / "report.html").read_text()
    assert 'class="banner"' in html and "± 0.0000" not in html


def test_readme_table_renders_from_metrics_json_alone(workspace: Path) -> None:
    metrics = {
        "TaskA": {
            "constant": {"dice_mean": 0.8, "dice_std": 0.01},
            "pgps": {"dice_mean": 0.81, "dice_std": None, "dice_delta": 0.01, "significance": 1},
        },
        "TaskB": {
            "constant": {"dice_mean": 0.7, "dice_std": 0.02},
            "pgps": {"dice_mean": 0.65, "dice_std": 0.03, "dice_delta": -0.05, "significance": 0},
        },
    }
    assert readme_table(metrics) == (
        "| task | `constant` (baseline) | `pgps` |\n"
        "|---|---|---|\n"
        "| TaskA | 0.8000 ± 0.0100 | **0.8100 ± n/a** ↑ |\n"
        "| TaskB | **0.7000 ± 0.0200** | 0.6500 ± 0.0300 |\n"
        "| mean over tasks | 0.7500 | 0.7300 |\n"
        "| higher Dice than `constant` (tasks) | — | 1 of 2 |\n"
        "| significantly better / worse (tasks) | — | 1 ↑ / 0 ↓ |\n"
    )
    _build(workspace)
    proc = subprocess.run(
        [sys.executable, "-m", "pgps.cli", "report", "--readme-table"], cwd=workspace, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    expected = readme_table(json.loads((workspace / "results" / "metrics.json").read_text()))
    assert proc.stdout == expected and "| Task901_PGPSSynth |" in expected


def test_missing_broken_or_old_run_is_one_clear_error(workspace: Path) -> None:
    params = load_params(workspace / "params.yaml")
    folder = workspace / "results" / "runs" / TASK / "pgps" / "fold_1"
    (folder / "metrics.json").write_text('{"dice": 0.5')
    with pytest.raises(PGPSError, match=r"pgps/fold_1/metrics\.json: not valid JSON"):
        build(params, workspace / "results" / "runs", workspace / "results")
    (folder / "metrics.json").unlink()
    with pytest.raises(PGPSError, match=r"pgps/fold_1/metrics\.json: not found \(run the evaluate stage"):
        build(params, workspace / "results" / "runs", workspace / "results")
    # an evaluate output from before the split (times inside metrics.json, no timings.json)
    (folder / "metrics.json").write_text((folder.parent / "fold_0" / "metrics.json").read_text())
    (folder / "timings.json").unlink()
    with pytest.raises(PGPSError, match=r"pgps/fold_1/timings\.json: not found"):
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
    for name in ("metrics.json", "timings.json", "plots", "report.md", "report.html"):
        assert not (results / name).exists(), name
    # the re-run completes and sweeps the killed run's temporaries
    subprocess.run(cmd, cwd=workspace, check=True, capture_output=True)
    assert json.loads((results / "metrics.json").read_text())[TASK]["pgps"]["dice_folds"].keys() == {"fold_0", "fold_1"}
    assert sorted(p.name for p in (results / "plots").iterdir()) == PNGS
    assert not [p for p in results.rglob("*partial*")]


def test_convergence_from_the_profile_or_report_converged(tmp_path: Path) -> None:
    """Default: only the paper's budget (profile full) counts as converged; report.converged overrides it."""
    for profile, expected in (("full", True), ("smoke", False), ("default", False)):
        params = load_params(write_params(tmp_path, [0], profile))
        converged, note = convergence(params)
        budget = f"{params.budget.epochs} epochs x {params.budget.iters_per_epoch} iterations"
        assert converged is expected and note == f"profile `{profile}`, {budget}"
    params = load_params(write_params(tmp_path, [0], "full"))
    report = dict(params.raw["report"])
    converged, note = convergence(replace(params, raw={**params.raw, "report": {**report, "converged": False}}))
    assert converged is False and note.endswith("report.converged: false")
    with pytest.raises(PGPSError, match=r"params\.yaml: report\.converged: must be true or false, got 'yes'"):
        convergence(replace(params, raw={**params.raw, "report": {**report, "converged": "yes"}}))
