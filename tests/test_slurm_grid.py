"""The grid on a real SLURM cluster started here (scripts/slurm/start-cluster.sh: munge, slurmdbd on MariaDB,
slurmctld, two virtual nodes with two fake GPUs each), through the same `pgps grid` commands a user runs. Toy
trainings keep most of these short: arrays + task-by-task ties + dependencies + fake-GPU assignment, a training
cancelled mid-run and requeued, a training that hits its time limit and is requeued by submitit (it waits alongside
the smoke grid). The smoke grid runs the real pipeline's stages for one training that it removed from the finished
smoke run `make test` shares (tests/smoke_run.py). The first tests need no cluster:
how many sbatch calls the paper's grid takes, and what reaches the generated batch script (marker `slurm` only on
the tests that start the cluster)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pgps.errors import PGPSError
from pgps.grid.config import GridConfig, Resources
from pgps.grid.progress import find_records, read_progress
from pgps.grid.runner import read_attempts
from pgps.grid.slurm import sbatch_parameters
from smoke_run import SMOKE_TASK, copy_run, finished_smoke_run, remove_training
from test_grid_helpers import (
    VENV_BIN,
    assert_record_complete,
    copy_pipeline_repo,
    dvc_status,
    make_toy_repo,
    pgps,
    read_record,
    structure,
)
from test_trainer_fixtures import CPU_ENV

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "slurm"
SMALL = {
    "default": {"cpus": 1, "mem_gb": 0.25, "time_min": 10},
    "stages": {"train": {"cpus": 1, "mem_gb": 0.25, "gpus": 1, "time_min": 10}},
}


def _free_port_base(span: int = 16) -> int:
    for base in range(16817, 30000, 97):
        try:
            for p in range(base, base + span):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range for the test cluster")


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root"
    for exe in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch", "sacct"):
        if not (shutil.which(exe) or Path("/usr/sbin", exe).exists()):
            return f"{exe} not installed (scripts/install-system-deps.sh)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running cluster for the whole session, stopped by PID afterwards; SLURM_CONF points at it."""
    reason = _unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the SLURM test cluster cannot start: {reason}")
        pytest.skip(reason)
    cdir = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(
        ["bash", str(SCRIPTS / "start-cluster.sh"), str(cdir), "--port", str(_free_port_base())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        if start.returncode != 0:
            msg = f"start-cluster.sh failed: {start.stderr.strip()[-2000:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(msg)
            pytest.skip(msg)
        yield {"SLURM_CONF": str(cdir / "etc" / "slurm.conf"), **CPU_ENV}
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop-cluster.sh"), str(cdir)], capture_output=True, timeout=120)
        leftovers = [f.name for f in (cdir / "run").glob("*.pid")]
        assert not leftovers, f"daemons left running: {leftovers}"


def wait_grid(repo: Path, env: dict[str, str], timeout: float, until=None) -> list[dict]:
    """Poll `pgps grid status --json` until every run ended (or ``until(rows)`` holds): every second while waiting
    for a moment (``until``: e.g. a training between two epochs), every 3 s while waiting for the end (each poll is a
    Python process asking sacct/squeue, ~0.3 CPU-s: polling a 3-minute grid every second cost a third of a core)."""
    interval = 1.0 if until is not None else 3.0
    deadline = time.time() + timeout
    rows: list[dict] = []
    while time.time() < deadline:
        proc = pgps(["grid", "status", "--json"], repo, env)
        assert proc.returncode == 0, proc.stderr
        rows = json.loads(proc.stdout)
        if until is not None and until(rows):
            return rows
        if until is None and all(r["state"] in ("done", "failed", "blocked") for r in rows):
            return rows
        time.sleep(interval)
    raise AssertionError(f"grid did not finish in {timeout} s: {rows}")


# ------------------------------------------------------------------------------------------- no cluster needed


def test_full_profile_is_a_few_sbatch_calls(tmp_path: Path) -> None:
    """The paper's grid (10 tasks x 9 runs x 5 folds = 450 trainings + 450 evaluations): one array per dvc.yaml
    stage for acquire/convert/plan, one training array per task, each evaluation array tied to its training
    array task by task, the report, the dvc commit -- 25 sbatch calls, not one per run (483 before)."""
    repo = copy_pipeline_repo(tmp_path / "repo", {})
    full = yaml.safe_load((repo / "profiles" / "full.yaml").read_text())
    tasks, runs = len(full["tasks"]), len(full["tasks"]) * len(full["trainers"]) * len(full["folds"])
    proc = pgps(["grid", "submit", "--profile", "full", "--dry-run"], repo)
    assert proc.returncode == 0, proc.stderr
    sbatch = [ln for ln in proc.stdout.splitlines() if ln.startswith("sbatch ")]
    assert len(sbatch) == 3 + 2 * tasks + 2 <= 30, sbatch
    trains = [n for n, ln in enumerate(sbatch, 1) if re.match(rf"sbatch {n}: train array of {runs // tasks} ", ln)]
    evals = [ln for ln in sbatch if " evaluate array of " in ln]
    assert len(trains) == tasks and len(evals) == tasks
    assert {int(re.search(r"aftercorr sbatch (\d+)", ln).group(1)) for ln in evals} == set(trains)
    train, evaluate = full["grid"]["stages"]["train"], full["grid"]["stages"]["evaluate"]
    gpu_hours = runs * (train["gpus"] * train["time_min"] + evaluate["gpus"] * evaluate["time_min"]) / 60
    stages = 3 * tasks + 2 * runs + 1
    assert proc.stdout.splitlines()[-2] == f"{stages} stages to run (0 stages already up to date)"
    assert proc.stdout.splitlines()[-1] == (
        f"totals: {len(sbatch)} sbatch jobs ({len(sbatch) - 2} of them job arrays), {stages + 1} tasks "
        f"(array tasks + single jobs), {gpu_hours:,.1f} GPU-hours requested (GPUs x time limit: an upper bound)"
    )


INJECTED = "gpu\n#SBATCH --uid=0"


def _batch_script(params: dict, folder: Path, tasks: int) -> str:
    """The batch script submitit writes for these parameters (its own generator, as at submission)."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm")
    executor.update_parameters(**params)
    if tasks > 1:
        executor._executor.parameters["map_count"] = tasks
    return executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")


def test_values_that_would_leave_their_sbatch_line_are_refused(tmp_path: Path) -> None:
    """Defence in depth: whatever checked the values before (params.yaml's schema, the flags), the generator of
    submitit's parameters refuses anything that could end its #SBATCH line -- one line naming the key."""
    res = Resources(cpus=1, mem_gb=1, gpus=1, time_min=5)
    for config, key in (
        (GridConfig(partition=INJECTED), "grid.partition"),
        (GridConfig(account="lab; rm -rf ~"), "grid.account"),
        (GridConfig(gres="gpu:1\rx"), "grid.gres"),
        (GridConfig(constraint="a100 ib"), "grid.constraint"),
        (GridConfig(sbatch_extra=("--comment=a\nb",)), "grid.sbatch_extra --comment"),
        (GridConfig(sbatch_extra=("--x\ny=1",)), "grid.sbatch_extra"),
    ):
        with pytest.raises(PGPSError, match=re.escape(key)) as err:
            sbatch_parameters(config, res, "train", tmp_path)
        assert "\n" not in str(err.value)
    with pytest.raises(PGPSError, match="job log folder"):
        sbatch_parameters(GridConfig(), res, "train", tmp_path / "my logs")
    # the same values through the command line and through params.yaml: one line, exit 2, nothing written
    repo = make_toy_repo(tmp_path / "repo", ["A"], [0], 2, 0.1)
    for argv, needle in (
        (["--partition", INJECTED], "--partition"),
        (["--sbatch-extra=--comment=x\n#SBATCH --uid=0"], "--sbatch-extra"),
        (["--constraint", "a100\n"], "--constraint"),
        (["--folder", str(tmp_path / "my logs")], "job log folder"),
    ):
        proc = pgps(["grid", "submit", "--dry-run", *argv], repo)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert needle in line, line
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["grid"] = {"account": "lab\n#SBATCH --uid=0"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = pgps(["grid", "submit", "--dry-run"], repo)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "grid.account" in proc.stderr
    assert not (repo / "logs").exists()


def test_batch_script_carries_constraint_extras_and_throttle(tmp_path: Path) -> None:
    config = GridConfig(
        partition="gpu,gpu-long",
        constraint="a100&ib",
        sbatch_extra=("--mail-type=END", "--exclusive"),
        array_parallelism=3,
    )
    params = sbatch_parameters(config, Resources(cpus=4, mem_gb=8, gpus=1, time_min=90), "train", tmp_path)
    script = _batch_script(params, tmp_path, tasks=5)
    header = script.split("# command", 1)[0].splitlines()
    assert all(ln.startswith("#SBATCH --") for ln in header if ln and not ln.startswith("#!") and ln != "# Parameters")
    for line in ("--array=0-4%3", "--constraint='a100&ib'", "--mail-type=END", "--exclusive", "--gpus-per-node=1",
                 "--partition=gpu,gpu-long", "--time=90"):  # fmt: skip
        assert f"#SBATCH {line}" in header, (line, header)


# ---------------------------------------------------------------------------------------- on the test cluster


@pytest.mark.slurm
def test_slurm_grid_arrays_dependencies_fake_gpus(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    repo = make_toy_repo(tmp_path / "repo", ["A", "B"], [0, 1], epochs=2, epoch_s=0.2, grid=SMALL, evaluate=True)
    flags = ["--constraint", "pgpstest", "--sbatch-extra=--comment=pgps-ci", "--array-parallelism", "2"]
    sub = pgps(["grid", "submit", *flags], repo, slurm_cluster)
    assert sub.returncode == 0, sub.stderr
    again = pgps(["grid", "submit"], repo, slurm_cluster)  # a grid in flight is not overwritten
    assert again.returncode == 2 and "of the last submission have not ended" in again.stderr
    rows = {r["run"]: r for r in wait_grid(repo, slurm_cluster, 120)}
    assert {r["state"] for r in rows.values()} == {"done"}, rows
    folder = repo / "logs" / "grid"
    state = json.loads((folder / "grid.json").read_text())
    assert state["jobs"]["train@A-1"]["deps"] == ["plan@A"]
    array = {name: row["job_id"].split("_")[0] for name, row in rows.items()}
    # 7 sbatch calls: plans (one array), one training array per task, one evaluation array per task tied to it
    # task by task, the report, dvc commit
    assert len(set(array.values())) == 7 and array["plan@A"] == array["plan@B"]
    assert array["train@A-0"] == array["train@A-1"] != array["train@B-0"] == array["train@B-1"]
    script = {name: _submitted_script(folder, row["job_id"]) for name, row in rows.items()}
    for t in "AB":
        assert f"#SBATCH --dependency=aftercorr:{array[f'train@{t}-0']}" in script[f"evaluate@{t}-0"]
        assert f"#SBATCH --dependency=afterok:{rows[f'plan@{t}']['job_id']}" in script[f"train@{t}-0"]
    for text in script.values():  # the flags reached every sbatch call
        assert "#SBATCH --constraint=pgpstest" in text and "#SBATCH --comment=pgps-ci" in text
    assert "#SBATCH --array=0-1%2" in script["train@A-0"]
    for t in "AB":
        plan_end = max(a["time"] for a in read_attempts(folder, f"plan@{t}") if a["event"] == "end")
        for f in (0, 1):
            start = read_attempts(folder, f"train@{t}-{f}")[0]
            assert start["time"] >= plan_end
            # SLURM gave the training one (fake) GPU; the record saw it
            assert start["cuda_visible_devices"] in ("0", "1")
            rec = read_record(repo / "out" / t / f"fold_{f}" / "pgps_record.json")
            assert_record_complete(rec, 2)
            assert rows[f"train@{t}-{f}"]["epoch"] == 2 and rows[f"train@{t}-{f}"]["seconds_left"] == 0
            train_end = max(a["time"] for a in read_attempts(folder, f"train@{t}-{f}") if a["event"] == "end")
            assert read_attempts(folder, f"evaluate@{t}-{f}")[0]["time"] >= train_end  # after ITS training
            assert json.loads((repo / "out" / t / f"eval_{f}.json").read_text()) == 2
    assert read_attempts(folder, "plan@A")[0]["cuda_visible_devices"] is None  # CPU stage: no GPU request
    assert all(Path(p).is_file() for row in rows.values() for p in row["logs"])  # each job's log, where status says
    assert "up to date" in dvc_status(repo)


def _submitted_script(folder: Path, job_id: str) -> str:
    """The batch script submitit handed to sbatch for this job (one per array, in the array's own folder)."""
    from submitit.core.utils import JobPaths

    return JobPaths(folder / "%j", job_id=job_id.split("_")[0]).submission_file.read_text()


@pytest.mark.slurm
def test_slurm_cancelled_training_requeued_resumes_at_its_stage(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    epochs = 10
    repo = make_toy_repo(tmp_path / "repo", ["A"], [0, 1], epochs=epochs, epoch_s=0.6, grid=SMALL)
    sub = pgps(["grid", "submit", "--gpus", "0"], repo, slurm_cluster)  # a CPU-only request works too
    assert sub.returncode == 0, sub.stderr
    record = repo / "out" / "A" / "fold_1" / "pgps_record.json"

    def mid_run(rows: list[dict]) -> bool:  # judged on the rows the status returned, not on the record read later
        row = {r["run"]: r for r in rows}["train@A-1"]
        return row["state"] == "running" and (row["epoch"] or 0) >= 3

    rows = {r["run"]: r for r in wait_grid(repo, slurm_cluster, 120, until=mid_run)}
    victim = rows["train@A-1"]
    assert victim["state"] == "running" and 3 <= victim["epoch"] < epochs and victim["seconds_left"] > 0
    assert len(read_record(record)["epochs"]) >= victim["epoch"]  # the status counted the record's epochs
    cancel = subprocess.run(["scancel", victim["job_id"]], env=os.environ | slurm_cluster, capture_output=True)
    assert cancel.returncode == 0, cancel.stderr
    rows = {
        r["run"]: r
        for r in wait_grid(
            repo, slurm_cluster, 60, until=lambda rs: {r["run"]: r for r in rs}["train@A-1"]["state"] == "failed"
        )
    }
    cut_at = len(read_record(record)["epochs"])
    assert cut_at < epochs
    failed = json.loads(pgps(["grid", "status", "--state", "failed", "--json"], repo, slurm_cluster).stdout)
    assert [r["run"] for r in failed] == ["train@A-1"]
    out, err = failed[0]["logs"]  # submitit's stdout/stderr of that array task, named by its job id
    assert failed[0]["job_id"] in out and "toy_train.py" in Path(out).read_text() and Path(err).is_file()
    # the report waits for a training that will never succeed ... until it is requeued
    req = pgps(["grid", "requeue", "train@A-1"], repo, slurm_cluster)
    assert req.returncode == 0, req.stderr
    assert "requeued train@A-1" in req.stdout
    rows = {r["run"]: r for r in wait_grid(repo, slurm_cluster, 180)}
    assert {r["state"] for r in rows.values()} == {"done"}, rows
    rec = read_record(record)
    assert_record_complete(rec, epochs)  # no gaps, no duplicates, stage sequence as scheduled
    assert len(rec["resumes"]) == 1 and 0 < rec["resumes"][0]["at_epoch"] <= cut_at  # from its checkpoint
    starts = [a for a in read_attempts(repo / "logs" / "grid", "train@A-1") if a["event"] == "start"]
    assert len(starts) == 2 and starts[0]["job_id"] == starts[1]["job_id"]  # the same job, requeued
    assert rows["train@A-1"]["attempts"] == 2 and rows["train@A-0"]["attempts"] == 1
    assert "up to date" in dvc_status(repo)


@pytest.mark.slurm
def test_slurm_grid_cancel_stops_every_job(slurm_cluster: dict[str, str], tmp_path: Path) -> None:
    repo = make_toy_repo(tmp_path / "repo", ["A"], [0, 1], epochs=60, epoch_s=1.0, grid=SMALL)
    assert pgps(["grid", "submit", "--gpus", "0"], repo, slurm_cluster).returncode == 0
    wait_grid(
        repo, slurm_cluster, 60, until=lambda rows: any(r["state"] == "running" for r in rows if "train" in r["run"])
    )
    proc = pgps(["grid", "cancel"], repo, slurm_cluster)
    assert proc.returncode == 0 and proc.stdout.startswith("cancelled "), proc.stderr
    rows = wait_grid(repo, slurm_cluster, 60, until=lambda rs: all(r["state"] in ("done", "failed") for r in rs))
    assert {r["run"]: r["state"] for r in rows}["train@A-0"] == "failed"
    # none of this grid's jobs is left in the queue (other tests' grids may be)
    arrays = {r["job_id"].split("_")[0] for r in rows}
    squeue = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i"], env=os.environ | slurm_cluster, capture_output=True, text=True
    )
    assert not {line.split("_")[0] for line in squeue.stdout.split()} & arrays, squeue.stdout


TIME_LIMIT_EPOCHS = 40


@pytest.fixture(scope="module")
def time_limit_grid(slurm_cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy training under a 1-minute limit, submitted as soon as a test asks for it: it spends its ~1.5 min
    waiting for the limit, so the smoke grid test requests it first and it runs alongside (CI time)."""
    grid = SMALL | {"stages": {"train": {"cpus": 1, "mem_gb": 0.25, "gpus": 0, "time_min": 1}}, "signal_delay_s": 55}
    repo = make_toy_repo(
        tmp_path_factory.mktemp("time-limit") / "repo", ["A"], [0], epochs=TIME_LIMIT_EPOCHS, epoch_s=1.0, grid=grid
    )
    sub = pgps(["grid", "submit"], repo, slurm_cluster)
    assert sub.returncode == 0, sub.stderr
    return repo


# the smoke profile's grid requests on the test cluster: CPU only, small
SMOKE_GRID = {
    "default": {"cpus": 1, "mem_gb": 1, "gpus": 0, "time_min": 30},
    "stages": {
        "train": {"cpus": 1, "mem_gb": 2, "gpus": 0, "time_min": 30},
        "evaluate": {"cpus": 1, "mem_gb": 2, "gpus": 0, "time_min": 30},
    },
}
PGPS_RUN = f"train@{SMOKE_TASK}-pgps-0"


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_smoke_pipeline_grid_cancel_requeue_then_dvc_has_nothing_to_do(
    slurm_cluster: dict[str, str], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, time_limit_grid: Path
) -> None:
    """The real pipeline (nnU-Net training, evaluation, pgps report, dvc commit) through `pgps grid submit`, started
    from a copy of the smoke run `make test` shares (tests/smoke_run.py) with its PGPS training removed: the grid
    submits exactly what that left stale, the PGPS training is scancelled after its first epoch and requeued, and
    afterwards DVC has nothing to do. The other runs are the shared run's, untouched (CI time: one training instead
    of four)."""
    env = slurm_cluster | {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    reference = finished_smoke_run(tmp_path_factory)["ws"]
    grid_repo = copy_run(reference, tmp_path / "grid")
    params = yaml.safe_load((grid_repo / "params.yaml").read_text())
    (grid_repo / "params.yaml").write_text(yaml.safe_dump(params | {"grid": SMOKE_GRID}, sort_keys=False))
    assert remove_training(grid_repo) == PGPS_RUN
    results = grid_repo / "data" / "nnUNet_results" / SMOKE_TASK
    kept = {p: p.stat().st_mtime_ns for p in results.rglob("checkpoint_final.pth")}
    assert len(kept) == len(params["trainers"]) * len(params["folds"]) - 1
    t0 = time.time()
    sub = pgps(["grid", "submit"], grid_repo, env)
    assert sub.returncode == 0, sub.stderr
    state = json.loads((grid_repo / "logs" / "grid" / "grid.json").read_text())
    # what the removed training leaves stale, nothing else: its training and evaluation, the report, dvc commit
    assert set(state["jobs"]) == {PGPS_RUN, PGPS_RUN.replace("train@", "evaluate@"), "report", "dvc-commit"}

    def pgps_mid_run(rows: list[dict]) -> bool:
        row = {r["run"]: r for r in rows}[PGPS_RUN]
        assert row["epoch"] is None or row["epoch"] < 4, f"the training ended before the grid saw it mid-run: {row}"
        return row["state"] == "running" and row["epoch"] is not None and 1 <= row["epoch"] < 4

    def recorded_epochs() -> int:  # what `pgps grid status` reads of the job's outputs, without starting a process
        progress = [p for p in map(read_progress, find_records(state["jobs"][PGPS_RUN]["outs"])) if p is not None]
        return progress[0].epochs_done if progress else 0

    # the 16^3 task's epochs take about a second each: wait for the first one in this process (a file read every
    # 0.1 s), so that the grid's status, asked next, meets the training between its epochs 1 and 4
    deadline = time.time() + 900
    while recorded_epochs() < 1 and time.time() < deadline:
        time.sleep(0.1)
    row = {r["run"]: r for r in wait_grid(grid_repo, env, 900, until=pgps_mid_run)}[PGPS_RUN]
    assert row["num_epochs"] == 4 and row["num_stages"] >= 2 and row["seconds_left"] is not None
    cancel = subprocess.run(["scancel", row["job_id"]], env=os.environ | env, capture_output=True)
    assert cancel.returncode == 0, cancel.stderr

    def cancelled(rows: list[dict]) -> bool:
        return {r["run"]: r for r in rows}[PGPS_RUN]["state"] == "failed"

    wait_grid(grid_repo, env, 120, until=cancelled)
    req = pgps(["grid", "requeue", PGPS_RUN], grid_repo, env)
    assert req.returncode == 0, req.stderr
    rows = {r["run"]: r for r in wait_grid(grid_repo, env, 1200)}
    assert {r["state"] for r in rows.values()} == {"done"}, rows
    print(f"smoke grid on the local cluster: {time.time() - t0:.0f} s")

    # the cancelled run resumed from its checkpoint at the stage the schedule gives that epoch
    (record,) = (results / "pgps").rglob("pgps_record.json")
    rec = read_record(record)
    sched = rec["schedule"]["stages"]
    want = [next(i for i, s in enumerate(sched) if s["start_epoch"] <= e < s["end_epoch"]) for e in range(4)]
    assert [e["epoch"] for e in rec["epochs"]] == [0, 1, 2, 3]
    assert [e["stage"] for e in rec["epochs"]] == want
    assert [e["patch_size"] for e in rec["epochs"]] == [sched[s]["patch_size"] for s in want]
    assert len(rec["resumes"]) == 1 and rec["resumes"][0]["at_epoch"] >= 1
    assert rows[PGPS_RUN]["attempts"] == 2

    # after the grid, DVC has nothing left to do: status clean, repro runs no stage; the other runs were not touched
    assert "up to date" in dvc_status(grid_repo)
    finals = {p: p.stat().st_mtime_ns for p in results.rglob("checkpoint_final.pth")}
    assert len(finals) == len(kept) + 1 and {p: finals[p] for p in kept} == kept
    repro = subprocess.run(
        [str(VENV_BIN / "dvc"), "repro"], cwd=grid_repo, env=os.environ | env, capture_output=True, text=True
    )
    assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout
    assert {p: p.stat().st_mtime_ns for p in finals} == finals

    # the grid's report stage wrote what the sequential run's did, with the new PGPS numbers in it
    def files(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in (root / "results").rglob("*") if p.is_file())

    assert files(grid_repo) == files(reference)
    g_metrics = json.loads((grid_repo / "results" / "metrics.json").read_text())
    s_metrics = json.loads((reference / "results" / "metrics.json").read_text())
    assert structure(g_metrics) == structure(s_metrics)
    g_run = json.loads((grid_repo / "results" / "runs" / SMOKE_TASK / "pgps" / "fold_0" / "metrics.json").read_text())
    assert g_metrics[SMOKE_TASK]["pgps"]["dice_folds"]["fold_0"] == g_run["dice"]
    g_md = (grid_repo / "results" / "report.md").read_text().splitlines()
    s_md = (reference / "results" / "report.md").read_text().splitlines()
    assert [ln for ln in g_md if ln.startswith("#")] == [ln for ln in s_md if ln.startswith("#")]
    assert [ln.split("|")[1] for ln in g_md if ln.startswith("|")] == [
        ln.split("|")[1] for ln in s_md if ln.startswith("|")
    ]


@pytest.mark.slurm
def test_slurm_time_limit_checkpoints_and_requeues(slurm_cluster: dict[str, str], time_limit_grid: Path) -> None:
    """1-minute limit, SIGUSR2 55 s before it (SLURM sends it 5-35 s in: its time-limit check runs every 30 s):
    submitit's Checkpointable requeues the training, which resumes from its checkpoint."""
    repo = time_limit_grid
    rows = {r["run"]: r for r in wait_grid(repo, slurm_cluster, 240)}
    assert {r["state"] for r in rows.values()} == {"done"}, rows
    attempts = read_attempts(repo / "logs" / "grid", "train@A-0")
    assert sum(a["event"] == "checkpoint" for a in attempts) >= 1
    rec = read_record(repo / "out" / "A" / "fold_0" / "pgps_record.json")
    assert_record_complete(rec, TIME_LIMIT_EPOCHS)
    assert len(rec["resumes"]) >= 1 and all(r["at_epoch"] > 0 for r in rec["resumes"])
    assert "up to date" in dvc_status(repo)
