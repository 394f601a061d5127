"""The real pipeline: `pgps reproduce` (= dvc repro) on the default profile in a fresh copy of the repository.

One session-scoped run (the expensive part, ~4 min on 2 idle cores) is shared by every test here; each test then
exercises DVC on it: report contents, a no-op second repro, a one-trainer change re-running only what depends
on it (and reproducing the same numbers: seeded runs), a kill during the report stage, dvc push / pull.
Tests run in file order and leave the workspace complete for the next one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from repo_copy import copy_repository

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TASK = "Task901_PGPSSynth"
STAGE_RE = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    for key in ("PGPS_DATA", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.pop(key, None)
    env.update(nnUNet_compile="f", nnUNet_n_proc_DA="0", nnUNet_def_n_proc="2", PYTHONUNBUFFERED="1")
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 2400) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    output = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}"
    return proc


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return _run([str(BIN / "dvc"), *args], cwd)


@pytest.fixture(scope="session")
def repro(tmp_path_factory: pytest.TempPathFactory) -> dict:
    ws = tmp_path_factory.mktemp("pipeline") / "repo"
    ws.mkdir()
    copy_repository(ws)
    start = time.monotonic()
    proc = _run([str(BIN / "pgps"), "reproduce"], ws)
    elapsed = time.monotonic() - start
    print(f"\n[pgps reproduce: {elapsed:.0f} s]\n{proc.stdout[-1500:]}")
    return {"ws": ws, "stdout": proc.stdout, "elapsed": elapsed}


def _runs(ws: Path) -> list[str]:
    return list(yaml.safe_load((ws / "params.yaml").read_text())["trainers"])


def test_reproduce_writes_metrics_report_and_plots(repro: dict) -> None:
    ws, runs = repro["ws"], _runs(repro["ws"])
    ran = STAGE_RE.findall(repro["stdout"])
    assert ran[:3] == [f"acquire@{TASK}", f"convert@{TASK}", f"plan@{TASK}"] and ran[-1] == "report"
    assert {f"train@{TASK}-{r}-0" for r in runs} <= set(ran) and {f"evaluate@{TASK}-{r}-0" for r in runs} <= set(ran)

    metrics = json.loads((ws / "results" / "metrics.json").read_text())
    rows = metrics["tasks"][TASK]
    assert list(rows) == runs
    for name, row in rows.items():
        assert 0.0 <= row["dice_mean"] <= 1.0 and math.isfinite(row["dice_std"]), (name, row)
        assert row["train_time_s"] > 0 and row["energy_kwh"] > 0 and row["co2_kg"] > 0, (name, row)
        assert row["time_ratio"] > 0 and row["co2_ratio"] > 0
    assert rows["constant"]["time_ratio"] == 1.0
    assert rows["pgps"]["wilcoxon_n"] >= 2

    # the curriculum the networks actually saw (from the batches recorded by the trainers)
    def voxels(run: str) -> list[float]:
        data = json.loads((ws / "results" / "runs" / TASK / run / "fold_0" / "metrics.json").read_text())
        return [p["patch_voxels"] for p in data["curve"]]

    planned = voxels("constant")
    assert len(set(planned)) == 1
    assert voxels("pgps")[0] < planned[0] and voxels("pgps")[-1] == planned[0]
    assert voxels("pgps") == sorted(voxels("pgps"))

    report = (ws / "results" / "report.md").read_text()
    for name in runs:
        assert f"| {TASK} | `{name}`" in report
    assert "## Wilcoxon signed-rank tests" in report and "git_commit: " in report
    assert "codecarbon_tracking_mode: machine" in report or "codecarbon_tracking_mode: process" in report
    for png in ("learning_curves.png", "curriculum.png", "runtime_co2.png"):
        assert (ws / "results" / "plots" / png).read_bytes().startswith(b"\x89PNG")
    # the table printed at the end
    assert "Dice mean±std" in repro["stdout"] and "pipeline wall time:" in repro["stdout"]
    for name in runs:
        assert re.search(rf"^{TASK}\s+{name}\b", repro["stdout"], re.MULTILINE)
    shown = json.loads(_dvc("plots", "show", "--json", cwd=ws).stdout)
    assert not shown.get("errors"), shown.get("errors")


def test_second_repro_is_a_no_op(repro: dict) -> None:
    ws = repro["ws"]
    proc = _dvc("repro", cwd=ws)
    assert STAGE_RE.findall(proc.stdout) == []
    assert "Data and pipelines are up to date." in proc.stdout
    assert "Data and pipelines are up to date." in _dvc("status", cwd=ws).stdout


def _metric_values(path: Path) -> dict[str, float]:
    """The numbers a seeded run must reproduce (Dice, per-case Dice, per-epoch losses and pseudo Dice)."""
    data = json.loads(path.read_text())
    values = {"dice": data["dice"], **{f"case:{k}": v for k, v in data["cases"].items()}}
    for p in data["curve"]:
        for key in ("train_loss", "val_loss", "pseudo_dice", "patch_voxels"):
            values[f"epoch{p['epoch']}:{key}"] = p[key]
    return values


def _epochs_checkpointed(ws: Path, run: str) -> int:
    """Epochs recorded by an unfinished run that already has a checkpoint to resume from (0: none yet).

    The trainer writes the record before the checkpoint, so killing right after a record update would find
    nothing to resume; the checkpoint is renamed into place complete, so its presence is the resumable state."""
    runs = ws / "data" / "nnUNet_results" / TASK / run
    folds = list(runs.glob(".fold_0.*.partial/Dataset*/*/fold_0"))
    if not folds or not (folds[0] / "checkpoint_latest.pth").is_file():
        return 0
    try:
        return len(json.loads((folds[0] / "pgps_record.json").read_text())["epochs"])
    except (OSError, ValueError):
        return 0  # being replaced right now


def test_changing_one_trainer_reruns_only_its_stages_resumes_after_kill_and_reproduces(repro: dict) -> None:
    """Change rpss's parameters -> only its train/evaluate + report are stale. Its training is SIGKILLed
    mid-curriculum; the next `dvc repro` resumes it (--c) and the seeded run gives the numbers of the first one."""
    ws = repro["ws"]
    before = _metric_values(ws / "results" / "runs" / TASK / "rpss" / "fold_0" / "metrics.json")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    # spell out rpss's validation iterations: a change of its parameters (same effective budget)
    params["trainers"]["rpss"]["val_iters"] = params["budget"]["val_iters"]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = [line[:-1] for line in _dvc("status", cwd=ws).stdout.splitlines() if re.match(r"^\S.*:$", line)]
    assert sorted(stale) == sorted([f"evaluate@{TASK}-rpss-0", "report", f"train@{TASK}-rpss-0"])

    proc = subprocess.Popen(
        [str(BIN / "dvc"), "repro"],
        cwd=ws,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    epochs = params["budget"]["epochs"]
    deadline, killed_at = time.monotonic() + 900, 0
    while time.monotonic() < deadline and proc.poll() is None:
        done = _epochs_checkpointed(ws, "rpss")
        if 0 < done < epochs:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = done
            break
        time.sleep(0.05)
    proc.wait()
    assert killed_at, "training finished before it could be killed mid-run"
    assert not (ws / "data" / "nnUNet_results" / TASK / "rpss" / "fold_0").exists()  # nothing half-done published

    rerun = _dvc("repro", cwd=ws)
    assert STAGE_RE.findall(rerun.stdout) == [f"train@{TASK}-rpss-0", f"evaluate@{TASK}-rpss-0", "report"]
    assert "resuming the interrupted run" in rerun.stdout
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    locked = lock["stages"][f"train@{TASK}-rpss-0"]["params"]["params.yaml"]["trainers.rpss"]
    assert locked["val_iters"] == params["budget"]["val_iters"]
    assert "Data and pipelines are up to date." in _dvc("status", cwd=ws).stdout

    # two seeded trainings of the same run (the randomly drawn RPSS curriculum, one killed and resumed)
    after = _metric_values(ws / "results" / "runs" / TASK / "rpss" / "fold_0" / "metrics.json")
    assert after.keys() == before.keys()
    record = json.loads((ws / "results" / "runs" / TASK / "rpss" / "fold_0" / "metrics.json").read_text())
    assert [p["epoch"] for p in record["curve"]] == list(range(epochs))  # no gap, no duplicate after the resume
    largest = max(abs(after[k] - before[k]) for k in before)
    print(f"\n[killed after {killed_at} epochs; largest difference between the two seeded rpss runs: {largest:.3g}]")
    assert largest == 0.0, {k: (before[k], after[k]) for k in before if before[k] != after[k]}


def test_killed_report_stage_is_not_done_and_reruns(repro: dict) -> None:
    ws, results = repro["ws"], repro["ws"] / "results"
    reference = json.loads((results / "metrics.json").read_text())
    proc = subprocess.Popen(
        [str(BIN / "dvc"), "repro", "--force", "--single-item", "report"],
        cwd=ws,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    caught, deadline = False, time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(any(d.glob("*.png")) for d in results.glob(".plots.*partial")):
            os.killpg(proc.pid, signal.SIGKILL)
            caught = True
            break
        time.sleep(0.005)
    proc.wait()
    assert caught, "the report stage finished before it could be killed mid-write"
    assert not (results / "metrics.json").exists()  # DVC removed the old one; the new one never landed
    assert "report" in _dvc("status", cwd=ws).stdout
    # DVC restores the last COMPLETE report from its cache (dvc.lock still matches deps/params), never the torn one
    rerun = _dvc("repro", cwd=ws)
    assert STAGE_RE.findall(rerun.stdout) == ["report"] or "Stage 'report' is cached" in rerun.stdout, rerun.stdout
    assert json.loads((results / "metrics.json").read_text())["tasks"] == reference["tasks"]
    leftovers = list(results.rglob("*partial*"))
    assert all(p.name.startswith(".") and ".partial" in p.name for p in leftovers), leftovers
    # a real re-run of `pgps report` completes and sweeps the killed run's temporaries
    forced = _dvc("repro", "--force", "--single-item", "report", cwd=ws)
    assert STAGE_RE.findall(forced.stdout) == ["report"]
    assert json.loads((results / "metrics.json").read_text())["tasks"] == reference["tasks"]
    assert not list(results.rglob("*partial*"))
    assert "Data and pipelines are up to date." in _dvc("status", cwd=ws).stdout


OUTPUTS = ("data/raw", "data/nnUNet_raw", "data/nnUNet_preprocessed", "data/nnUNet_results", "results")


def _tracked_files(ws: Path) -> dict[str, str]:
    out = {}
    for top in OUTPUTS:
        for path in sorted((ws / top).rglob("*")):
            if path.is_file() and path.name != ".gitignore":
                out[str(path.relative_to(ws))] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


def test_dvc_push_wipe_pull_gives_identical_files(repro: dict, tmp_path: Path) -> None:
    ws = repro["ws"]
    before = _tracked_files(ws)
    assert any(p.endswith("checkpoint_final.pth") for p in before) and any(p.endswith("emissions.csv") for p in before)
    _dvc("remote", "add", "--local", "-f", "-d", "ci", str(tmp_path / "remote"), cwd=ws)
    _dvc("push", cwd=ws)
    assert "results/metrics.json" in before and "results/plots/learning_curves.png" in before
    for top in (*OUTPUTS, ".dvc/cache"):
        shutil.rmtree(ws / top)
    assert _tracked_files(ws) == {}
    _dvc("pull", cwd=ws)
    assert _tracked_files(ws) == before
    assert "Data and pipelines are up to date." in _dvc("status", cwd=ws).stdout
