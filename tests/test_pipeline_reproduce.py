"""`pgps reproduce`: profiles without surprises, `--list` with its cost estimate, and the per-stage progress lines.

- A profile replaces params.yaml only when params.yaml holds no edits of its own (it is a copy of some profile);
  otherwise one line says how to keep or drop the edits, and nothing is written.
- `--list` shows a profile's grid (DVC's own expansion) and its cost without applying it: nothing on disk changes.
- While DVC runs, each stage gets ``[k/N] <stage> | ... ETA``; the ETA comes from the stages already finished.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgps.errors import PGPSError
from pgps.params import load_params
from pgps.pipeline import estimate
from pgps.pipeline.profiles import apply_profile, matching_profile
from pgps.pipeline.stage_progress import StageProgress, describe
from repo_copy import ROOT, copy_repository

BIN = Path(sys.executable).parent


def _pgps(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "pgps.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _disk_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root (git's own folder aside) with its size and mtime in ns."""
    state = {}
    for path in sorted(root.rglob("*")):
        if ".git" in path.relative_to(root).parts[:1]:
            continue
        st = path.lstat()
        state[str(path.relative_to(root))] = (st.st_size if path.is_file() else 0, st.st_mtime_ns)
    return state


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A fresh copy of the repository with DVC initialised (as `make reproduce` finds it)."""
    ws = copy_repository(tmp_path)
    if not (ws / ".dvc").is_dir():
        subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=ws, check=True)
    return ws


def test_outside_a_dvc_workspace_is_one_clear_error(tmp_path: Path) -> None:
    proc = _pgps("reproduce", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"pgps reproduce: error: {tmp_path}: no dvc.yaml and .dvc/ here; run `pgps reproduce` from the repository root"
    )


def test_the_default_profile_is_params_yaml() -> None:
    """params.yaml ships as the default profile, so `--profile default` goes back without git (Docker workspaces)."""
    assert (ROOT / "params.yaml").read_bytes() == (ROOT / "profiles" / "default.yaml").read_bytes()
    assert load_params(ROOT / "params.yaml").profile == "default"
    assert load_params(ROOT / "profiles" / "smoke.yaml").profile == "smoke"


def test_unknown_or_invalid_profile_leaves_params_untouched(workspace: Path) -> None:
    original = (workspace / "params.yaml").read_bytes()
    proc = _pgps("reproduce", "--profile", "nope", cwd=workspace)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "pgps reproduce: error: profiles/nope.yaml: no such profile (available: default, full, smoke)"
    )
    bad = yaml.safe_load((workspace / "profiles" / "full.yaml").read_text())
    bad["budget"]["epochs"] = -1000
    (workspace / "profiles" / "broken.yaml").write_text(yaml.safe_dump(bad))
    proc = _pgps("reproduce", "--profile", "broken", cwd=workspace)
    assert proc.returncode == 2
    assert proc.stderr.startswith("pgps reproduce: error: profiles/broken.yaml: budget.epochs: ")
    assert proc.stderr.count("\n") == 1
    assert (workspace / "params.yaml").read_bytes() == original
    assert not list(workspace.glob(".params.yaml.*"))  # no temp file left behind either


def test_a_profile_never_overwrites_local_edits(workspace: Path) -> None:
    params = workspace / "params.yaml"
    edited = params.read_text().replace("seed: 0 ", "seed: 7 ", 1)
    assert edited != params.read_text()
    params.write_text(edited)
    before = _disk_state(workspace)
    proc = _pgps("reproduce", "--profile", "smoke", cwd=workspace)
    assert proc.returncode == 2, proc.stdout[-2000:]
    message = proc.stderr.strip()
    assert "\n" not in message
    assert message.startswith("pgps reproduce: error: params.yaml: has edits that are in no profiles/*.yaml")
    assert "cp params.yaml profiles/mine.yaml" in message and "cp profiles/default.yaml params.yaml" in message
    assert _disk_state(workspace) == before and params.read_text() == edited  # nothing ran, nothing written

    # kept as a profile, the edits are one; then every switch is lossless
    (workspace / "profiles" / "mine.yaml").write_text(edited)
    profiles = workspace / "profiles"
    assert matching_profile(params, profiles) == "mine"
    assert apply_profile("smoke", params, profiles) is True
    assert params.read_bytes() == (profiles / "smoke.yaml").read_bytes()
    assert apply_profile("smoke", params, profiles) is False  # already it: not even rewritten
    assert apply_profile("mine", params, profiles) is True and params.read_text() == edited
    assert apply_profile("default", params, profiles) is True
    assert params.read_bytes() == (ROOT / "params.yaml").read_bytes()

    # an edit of the site's grid: section is an edit like any other
    tree = yaml.safe_load(params.read_text())
    tree["grid"]["partition"] = "gpu"
    params.write_text(yaml.safe_dump(tree, sort_keys=False))
    with pytest.raises(PGPSError, match=f"^{re.escape(str(params))}: has edits"):
        apply_profile("full", params, profiles)
    assert yaml.safe_load(params.read_text())["grid"]["partition"] == "gpu"


def test_list_shows_the_papers_grid_and_its_cost_and_changes_nothing(workspace: Path) -> None:
    dvc_yaml, params = (workspace / "dvc.yaml").read_bytes(), (workspace / "params.yaml").read_bytes()
    before = _disk_state(workspace)
    proc = _pgps("reproduce", "--profile", "full", "--list", cwd=workspace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _disk_state(workspace) == before  # --list is read-only: params.yaml stays the default profile
    assert (workspace / "params.yaml").read_bytes() == params and (workspace / "dvc.yaml").read_bytes() == dvc_yaml

    full = load_params(workspace / "profiles" / "full.yaml")
    stages = re.findall(r"^(\S+@\S+|report)$", proc.stdout, re.MULTILINE)
    trains = [s for s in stages if s.startswith("train@")]
    assert len(trains) == len(full.tasks) * len(full.trainers) * len(full.folds) == 450
    assert "train@Task10_Colon-constant_10pct-4" in trains
    assert len([s for s in stages if s.startswith("plan@")]) == 10 and "report" in stages
    assert f"profiles/full.yaml: profile full, {len(stages)} stages; nothing was run or changed" in proc.stdout
    assert "trainings: 450 (10 tasks x 9 runs x 5 folds)" in proc.stdout
    hours = float(re.search(r"GPU time: ~([\d,]+) GPU-hours", proc.stdout).group(1).replace(",", ""))
    expected = estimate.estimate(full, workspace / "data" / "downloads")
    assert hours == round(expected.gpu_hours) and 500 < hours < 5000
    assert re.search(r"^disk: ~[\d,.]+ GB = checkpoints", proc.stdout, re.MULTILINE)

    # and the default profile, listed in place: nothing run, nothing written either
    proc = _pgps("reproduce", "--list", cwd=workspace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "params.yaml: profile default," in proc.stdout and "GPU time: none (device cpu)" in proc.stdout
    assert _disk_state(workspace) == before


def test_gpu_estimate_rests_on_the_committed_h200_measurement() -> None:
    measured = json.loads((ROOT / "benchmarks/gpu/h200_stage_speed_eager_autodynamic.json").read_text())
    table = [(tuple(e["patch_size"]), e["batch_size"], e["step_s"]) for e in measured["eager"]]
    assert list(estimate.H200_STEPS) == table
    for patch, batch, seconds in table:
        assert estimate.step_seconds(patch, batch) == pytest.approx(seconds)
    # between measured shapes: between their times; below the smallest: never faster than any measured step
    full_step = table[-1][2]  # 128^3, batch 2
    assert table[-2][2] < estimate.step_seconds((128, 128, 112), 2) < full_step
    assert estimate.step_seconds((8, 8, 8), 2) == table[0][2]  # launch-bound: not faster than 64x32x32
    assert estimate.step_seconds((128, 128, 128), 4) == pytest.approx(2 * full_step)

    full = load_params(ROOT / "profiles" / "full.yaml")
    constant = estimate.run_gpu_seconds(full.trainers["constant"], full.seed)
    assert constant == pytest.approx(1000 * (250 + 50) * full_step)  # every step at the full patch
    pgps = estimate.run_gpu_seconds(full.trainers["pgps"], full.seed)
    # the curriculum's train steps: 0.578 of constant patch (README Performance), validation unchanged
    assert (pgps - 1000 * 50 * full_step) / (1000 * 250 * full_step) == pytest.approx(0.578, abs=0.005)


def test_stage_names_read_as_words() -> None:
    assert describe("train@Task901_PGPSSynth-pgps_plus-1") == "train Task901_PGPSSynth pgps_plus fold 1"
    assert describe("evaluate@Task04_Hippocampus-constant_10pct-4") == (
        "evaluate Task04_Hippocampus constant_10pct fold 4"
    )
    assert describe("plan@Task901_PGPSSynth") == "plan Task901_PGPSSynth"
    assert describe("report") == "report"


def test_progress_lines_count_the_stages_and_the_eta_comes_from_finished_ones() -> None:
    clock = [0.0]
    planned = [
        "plan@T",
        "train@T-constant-0",
        "train@T-constant-1",
        "train@T-pgps-0",
        "train@T-pgps-1",
        "report",
    ]
    progress = StageProgress(list(planned), now=lambda: clock[0], wall=lambda: 0.0)

    def start(stage: str, at: float) -> str:
        clock[0] = at
        return progress.started(stage)

    assert start("plan@T", 0) == "[1/6] plan T | 0 of 6 done in 0:00, ETA after the first stage"
    line = start("train@T-constant-0", 10)  # plan took 10 s; no train timed yet
    assert line.startswith("[2/6] train T constant fold 0 | 1 of 6 done in 0:10, ETA ")
    assert line.endswith("(~0:00 left + train, report: not timed yet)")
    line = start("train@T-constant-1", 110)  # constant fold 0: 100 s; its fold 1 is expected to take as long
    assert line.endswith("(~5:00 left + report: not timed yet)")  # 100 (this one) + 2 x 100 (pgps: the train mean)
    line = start("train@T-pgps-0", 210)
    assert line.startswith("[4/6] train T pgps fold 0 | 3 of 6 done in 3:30")
    assert line.endswith("(~3:20 left + report: not timed yet)")
    line = start("train@T-pgps-1", 250)  # pgps fold 0 took 40 s: pgps's own time now, not the train mean
    assert line.endswith("(~0:40 left + report: not timed yet)")
    clock[0] = 260  # 10 s into pgps fold 1: the ETA counts what is left of it
    assert progress.eta().endswith("(~0:30 left + report: not timed yet)")
    line = start("report", 290)
    assert line.startswith("[6/6] report | 5 of 6 done in 4:50")
    clock[0] = 300
    assert progress.finished() == 300 and progress.done["report"] == 10
    # a stage DVC runs beyond the plan is counted, not dropped
    assert progress.started("evaluate@T-pgps-1").startswith("[7/7] evaluate T pgps fold 1")


METRICS = "results/metrics.json"
WAIT_FOR = (
    "import pathlib, sys, time\n"
    "here, other = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
    "here.write_text('started')\n"
    "deadline = time.monotonic() + 60\n"
    "while not other.exists():\n"
    "    if time.monotonic() > deadline: sys.exit('the other stage never ran at the same time')\n"
    "    time.sleep(0.01)\n"
)


def _toy_pipeline(ws: Path, fail: bool = False) -> None:
    """Two independent stages that each wait for the other to have started (they can only finish when run at
    once), then one that needs both; a real DVC repository with the project's params.yaml."""
    (ws / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    (ws / "wait.py").write_text(WAIT_FOR)
    metrics = json.dumps({"T": {"constant": {"dice_mean": 0.5, "dice_std": None}}})
    report = f"mkdir -p results && echo '{metrics}' > {METRICS}"
    last = "exit 3" if fail else f"cat a/started b/started > both.txt && {report}"
    stages = {
        "a": {"cmd": "mkdir -p a && python wait.py a/started b/started", "deps": ["wait.py"], "outs": ["a"]},
        "b": {"cmd": "mkdir -p b && python wait.py b/started a/started", "deps": ["wait.py"], "outs": ["b"]},
        "both": {"cmd": last, "deps": ["a", "b"], "outs": ["both.txt", METRICS]},
    }
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=ws, check=True)
    (ws / ".dvc" / "config").write_bytes((ROOT / ".dvc" / "config").read_bytes())  # the project's cache links


def test_stages_run_side_by_side_and_each_is_recorded_in_dvc_lock(tmp_path: Path) -> None:
    _toy_pipeline(tmp_path)
    proc = _pgps("reproduce", "--jobs", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = re.findall(r"^\[(\d)/3\] (\S+) \|", proc.stdout, re.MULTILINE)
    assert sorted(lines[:2]) == [("1", "a"), ("2", "b")] or sorted(n for _, n in lines[:2]) == ["a", "b"]
    assert lines[2] == ("3", "both")
    assert (tmp_path / "both.txt").read_text() == "startedstarted"
    assert "Updating lock file" not in proc.stdout  # DVC's chatter per commit stays out
    assert re.search(r"^T\s+constant \(baseline\)\s+0\.5000", proc.stdout, re.MULTILINE)  # the table at the end
    assert (tmp_path / "logs" / "reproduce" / "a.log").read_text().startswith("+ (cd ")
    started = tmp_path / "a" / "started"  # a file of a folder output: linked to DVC's cache, not a second copy
    assert started.stat().st_nlink >= 2 and not started.stat().st_mode & 0o222  # (b/started: same content)
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"a", "b", "both"}
    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=tmp_path, capture_output=True, text=True)
    assert "Data and pipelines are up to date." in status.stdout
    again = _pgps("reproduce", "--jobs", "2", "--list", cwd=tmp_path)
    assert again.returncode == 0 and "3 stages; nothing was run or changed" in again.stdout


def test_a_failed_stage_is_named_and_the_finished_ones_stay_recorded(tmp_path: Path) -> None:
    _toy_pipeline(tmp_path, fail=True)
    proc = _pgps("reproduce", "--jobs", "2", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "pgps reproduce: error: stage both failed; its output: logs/reproduce/both.log (its last lines are above)"
    )
    assert "both: FAILED (exit 3)" in proc.stdout
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"a", "b"}  # what finished is kept: a rerun starts at the failed stage
    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert "both:" in status and "a:" not in status.splitlines()[0:1]


def test_default_jobs_follow_the_pinned_threads() -> None:
    from pgps.pipeline.reproduce import default_jobs

    params = load_params(ROOT / "params.yaml")
    threads = params.runtime["threads"]
    assert default_jobs(params, cores=2) == (2 // threads if threads else 1)
    assert default_jobs(load_params(ROOT / "profiles" / "full.yaml"), cores=64) == 1  # one GPU
