"""The local executor on a real DVC repository: N jobs at once, one per (fake) GPU, in DVC's order;
resumable after an interrupt; `dvc status` clean and `dvc repro` a no-op afterwards. ~15 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgps.grid.runner import read_attempts
from test_grid_helpers import VENV_BIN, assert_record_complete, dvc_status, make_toy_repo, pgps, read_record
from test_trainer_fixtures import CPU_ENV

pytestmark = pytest.mark.beside_daemons  # make test: in the Docker/SLURM process (CI balance)


def _intervals(folder: Path, names: list[str]) -> dict[str, tuple[float, float, str | None]]:
    out = {}
    for name in names:
        attempts = read_attempts(folder, name)
        start = next(a for a in attempts if a["event"] == "start")
        end = next(a for a in attempts if a["event"] == "end")
        out[name] = (start["time"], end["time"], start.get("cuda_visible_devices"))
    return out


def test_local_two_slots_one_job_per_gpu_then_dvc_is_clean(tmp_path: Path) -> None:
    repo = make_toy_repo(tmp_path / "repo", ["A", "B"], [0, 1], epochs=3, epoch_s=0.4)
    proc = pgps(["grid", "submit", "--executor", "local", "--devices", "0,1"], repo, CPU_ENV)
    assert proc.returncode == 0, proc.stderr
    folder = repo / "logs" / "grid"
    trains = [f"train@{t}-{f}" for t in "AB" for f in (0, 1)]
    spans = _intervals(folder, trains + ["plan@A", "plan@B", "report"])
    # never more than two at once, and two at once did happen; overlapping jobs hold different GPUs
    events = sorted([(s, 1) for s, _, _ in spans.values()] + [(e, -1) for _, e, _ in spans.values()])
    level, peak = 0, 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert peak == 2
    for a in trains:
        for b in trains:
            sa, ea, da = spans[a]
            sb, eb, db = spans[b]
            if a < b and sa < eb and sb < ea:
                assert da != db, f"{a} and {b} ran at once on GPU {da}"
    assert {spans[t][2] for t in trains} <= {"0", "1"}
    # DVC's order: a task's planning before its trainings, the report after all of them
    for t in "AB":
        assert all(spans[f"plan@{t}"][1] <= spans[f"train@{t}-{f}"][0] for f in (0, 1))
    assert max(spans[t][1] for t in trains) <= spans["report"][0]
    for t in trains:
        task, fold = t.split("@")[1].split("-")
        rec = read_record(repo / "out" / task / f"fold_{fold}" / "pgps_record.json")
        assert_record_complete(rec, 3)
        assert {e["cuda_visible_devices"] for e in rec["epochs"]} == {spans[t][2]}
    assert json.loads((repo / "report.json").read_text()) == sorted(
        f"out/{t}/fold_{f}/pgps_record.json" for t in "AB" for f in (0, 1)
    )
    # the grid recorded everything in dvc.lock: nothing left for DVC to do
    assert "up to date" in dvc_status(repo)
    mtimes = {p: p.stat().st_mtime_ns for p in (repo / "out").rglob("pgps_record.json")}
    repro = subprocess.run([str(VENV_BIN / "dvc"), "repro"], cwd=repo, capture_output=True, text=True, check=True)
    assert "Running stage" not in repro.stdout, repro.stdout
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    # and a second submission finds nothing to do
    again = pgps(["grid", "submit", "--executor", "local", "--devices", "0,1"], repo, CPU_ENV)
    assert again.returncode == 0 and "nothing to submit" in again.stdout


def test_local_interrupted_grid_resumes_from_checkpoint(tmp_path: Path) -> None:
    epochs = 8
    repo = make_toy_repo(tmp_path / "repo", ["A"], [0], epochs=epochs, epoch_s=0.5)
    record = repo / "out" / "A" / "fold_0" / "pgps_record.json"
    env = dict(os.environ) | CPU_ENV
    runner = subprocess.Popen(
        [str(VENV_BIN / "pgps"), "grid", "submit", "--executor", "local", "--slots", "1"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if record.is_file() and len(read_record(record)["epochs"]) >= 3:
                break
            time.sleep(0.1)
        # mid-run: status reports the running training, its stage, epoch and time left
        status = pgps(["grid", "status", "--json"], repo)
        assert status.returncode == 0, status.stderr
        row = next(r for r in json.loads(status.stdout) if r["run"] == "train@A-0")
        assert row["state"] == "running"
        assert row["num_epochs"] == epochs and 3 <= row["epoch"] < epochs
        assert 0 < row["seconds_left"] <= (epochs - row["epoch"]) * 1.0
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 2 and "did not finish" in err
    done_before = len(read_record(record)["epochs"])
    assert done_before < epochs
    status = json.loads(pgps(["grid", "status", "--json"], repo).stdout)
    assert {r["run"]: r["state"] for r in status}["train@A-0"] == "failed"
    # what to look at: only the failed runs, each with its log (the interrupted training's output is in it)
    failed = json.loads(pgps(["grid", "status", "--state", "failed", "--json"], repo).stdout)
    assert {r["state"] for r in failed} == {"failed"} and "train@A-0" in {r["run"] for r in failed}
    assert len(failed) < len(status)
    (log,) = next(r for r in failed if r["run"] == "train@A-0")["logs"]
    assert "toy_train.py" in Path(log).read_text()  # the stage command's banner, then its output
    table = pgps(["grid", "status", "--state", "failed", "--state", "blocked"], repo).stdout.splitlines()
    assert table[0].split()[:8] == ["run", "job", "state", "stage", "epoch", "left", "tries", "log"]
    row = next(ln for ln in table if ln.startswith("train@A-0 "))
    assert str(Path(log).relative_to(repo)) in row
    assert table[-1].endswith(f"({len(failed)} shown)")
    # run it again: the training continues from its checkpoint, not from epoch 0
    proc = pgps(["grid", "submit", "--executor", "local", "--slots", "1"], repo, CPU_ENV)
    assert proc.returncode == 0, proc.stderr
    rec = read_record(record)
    assert_record_complete(rec, epochs)
    assert [r["at_epoch"] for r in rec["resumes"]] == [done_before]
    assert "up to date" in dvc_status(repo)


def test_a_stage_process_ignores_slurms_time_limit_signal(tmp_path: Path) -> None:
    """SLURM signals every process of the job step at the time limit, the stage's own included: the stage must
    not die of SIGUSR2 before submitit's handler (in the runner) stops it and requeues the job."""
    from pgps.grid.runner import StageRun

    stage = f"{sys.executable} -c \"import os, signal; os.kill(os.getpid(), signal.SIGUSR2); print('survived')\""
    log = tmp_path / "stage.log"
    result = StageRun("train@A-0", stage, str(tmp_path), str(tmp_path / "grid"), log=str(log))()
    assert result["stage"] == "train@A-0" and "survived" in log.read_text()
    assert [a["event"] for a in read_attempts(tmp_path / "grid", "train@A-0")] == ["start", "end"]
