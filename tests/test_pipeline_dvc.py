"""The real pipeline: `pgps reproduce` in a fresh copy of the repository, as CI's clean clone.

One session-scoped run of the smoke profile is shared by the DVC behaviour tests here. Exact re-execution of the
default profile (the committed results/metrics.json comes back bit for bit, `dvc metrics diff` shows nothing, `dvc
status` is clean) is `test_default_profile_reproduces_the_committed_metrics`, marker ``exact``: about 9 minutes on 2
cores, run by `make test-exact`; `make test` (CI) re-runs one PGPS training of it against the committed bits
(`test_one_default_training_from_a_hostile_shell_reproduces_the_committed_bits`). The others exercise DVC on the
same workspace: a no-op second repro, a one-trainer change re-running only what depends on it (one of its trainings
killed and resumed, and the numbers reproduced), a kill during the report stage, dvc push / pull. Tests run in file
order and leave the workspace complete for the next one.
"""

from __future__ import annotations

import hashlib
import json
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

from pgps.pipeline.stage_progress import describe
from repo_copy import calm_shell, prepared_repository, private_copy
from smoke_run import HOSTILE_ENV, copy_run, finished_smoke_run, pipeline_env, reproduce

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
STAGE_RE = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)
PROGRESS_RE = re.compile(r"^\[(\d+)/(\d+)\] (.+?) \| ", re.MULTILINE)
UP_TO_DATE = "Data and pipelines are up to date."
METRICS = Path("results/metrics.json")


def _run(
    cmd: list[str], cwd: Path, timeout: float = 2400, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=pipeline_env(env), capture_output=True, text=True, timeout=timeout)
    output = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}"
    return proc


def _committed(ws: Path, path: Path) -> str:
    """``path`` as committed in the workspace's git repository ('' where it is not committed)."""
    return subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ws, capture_output=True, text=True).stdout


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return _run([str(BIN / "dvc"), *args], cwd)


def _reproduce(tmp_path_factory: pytest.TempPathFactory, profile: str) -> dict:
    """`pgps reproduce` of ``profile`` in a fresh copy, from a shell that exports HOSTILE_ENV."""
    result = reproduce(tmp_path_factory.mktemp(f"pipeline-{profile}") / "repo", profile)
    print(f"\n[pgps reproduce ({profile}): {result['elapsed']:.0f} s]\n{result['stdout'][-1500:]}")
    return result


@pytest.fixture(scope="session")
def repro(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A private copy of the smoke profile's run (made once per `make test` and shared with the Docker and SLURM
    stages: tests/smoke_run.py), for the DVC behaviour tests here, which change it in file order."""
    run = finished_smoke_run(tmp_path_factory)
    print(f"\n[pgps reproduce (smoke): {run['elapsed']:.0f} s]\n{run['stdout'][-1500:]}")
    ws = copy_run(run["ws"], tmp_path_factory.mktemp("pipeline-smoke") / "repo")
    return run | {"ws": ws}


def _grid(params: dict) -> list[tuple[str, str, int]]:
    return [(t, r, f) for t in params["tasks"] for r in params["trainers"] for f in params["folds"]]


def _run_metrics(ws: Path, task: str, run: str, fold: int) -> dict:
    return json.loads((ws / "results" / "runs" / task / run / f"fold_{fold}" / "metrics.json").read_text())


def _started(stdout: str, params: dict) -> list[str]:
    """The stages in the order `pgps reproduce` started them, from its progress lines (one per stage, in both
    modes: `dvc repro` and stages side by side)."""
    names = [f"{s}@{t}" for s in ("acquire", "convert", "plan") for t in params["tasks"]]
    names += [f"{s}@{t}-{r}-{f}" for s in ("train", "evaluate") for t, r, f in _grid(params)] + ["report"]
    by_words = {describe(n): n for n in names}
    progress = PROGRESS_RE.findall(stdout)
    assert [int(k) for k, _, _ in progress] == list(range(1, len(progress) + 1))
    assert {int(n) for _, n, _ in progress} == {len(names)}
    return [by_words[what] for _, _, what in progress]


def _check_stage_order(repro: dict) -> None:
    params = repro["params"]
    tasks = params["tasks"]
    ran = _started(repro["stdout"], params)
    assert sorted(ran) == sorted(set(ran)) and len(ran) == 3 * len(tasks) + 2 * len(_grid(params)) + 1
    assert ran[0].startswith("acquire@") and ran[-1] == "report"
    for task, run, fold in _grid(params):
        train, evaluate = f"train@{task}-{run}-{fold}", f"evaluate@{task}-{run}-{fold}"
        assert ran.index(f"plan@{task}") < ran.index(train) < ran.index(evaluate)
    assert "ETA" in repro["stdout"] and "pipeline wall time:" in repro["stdout"]


@pytest.mark.exact
def test_default_profile_reproduces_the_committed_metrics(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`make test-exact`: on a clean clone `pgps reproduce` of the default profile re-creates the committed metrics
    bit for bit and leaves DVC clean, although the shell exported other thread counts, CPU kernels and budget
    variables (HOSTILE_ENV). About 9 minutes on 2 idle cores, so `make test` runs only one training of it."""
    repro = _reproduce(tmp_path_factory, "default")
    _check_stage_order(repro)
    ws = repro["ws"]
    committed = _committed(ws, METRICS)
    assert committed, f"{METRICS} is not committed: run `make reproduce` and commit it with dvc.lock"
    assert json.loads((ws / METRICS).read_text()) == json.loads(committed)
    assert json.loads(_dvc("metrics", "diff", "--json", cwd=ws).stdout or "{}") == {}
    assert UP_TO_DATE in _dvc("status", cwd=ws).stdout


def _unlike_the_committed_shell() -> dict[str, str]:
    """A hostile shell that differs from HOSTILE_ENV, the shell the committed dvc.lock was made in, in every
    variable either sets: test_hermetic_runs.HOSTILE (budget, augmentation, CUDA graphs, compile, nnU-Net's folders
    and workers, TF32, inductor, ...) less what it shares with HOSTILE_ENV, so the thread counts and CPU kernels are
    those of a calm shell. A variable that reached either run would move the bits of one and not the other."""
    from test_hermetic_runs import HOSTILE

    return calm_shell() | {k: v for k, v in HOSTILE.items() if HOSTILE_ENV.get(k) != v}


def test_one_default_training_from_a_hostile_shell_reproduces_the_committed_bits(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """CI's share of exact re-execution (the whole default profile is `make test-exact`, about 9 minutes), and the
    real run of the hermetic-environment checks (tests/test_hermetic_runs.py): on a clean copy whose data stages ran
    from a calm shell, `dvc repro` of one PGPS training of the default profile and its evaluation from a shell unlike
    the committed dvc.lock's in every variable (_unlike_the_committed_shell). The data stages' outputs hash to the
    committed dvc.lock, the training's lock entry (command, deps, params) is the committed one, its knobs and torch's
    threads are params.yaml's, and its held-out Dice equals the committed results/metrics.json to the last bit."""
    tasks = yaml.safe_load((ROOT / "params.yaml").read_text())["tasks"]
    prepared = prepared_repository(tmp_path_factory, *(f"plan@{task}" for task in tasks))
    ws = private_copy(prepared, tmp_path_factory.mktemp("default-one") / "repo")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    task, run, fold = params["tasks"][0], "pgps", params["folds"][0]
    committed = yaml.safe_load(_committed(ws, Path("dvc.lock")))["stages"]
    shell = _unlike_the_committed_shell()
    assert not {k for k, v in HOSTILE_ENV.items() if shell.get(k) == v}  # every variable differs
    cmd = [str(BIN / "dvc"), "repro", f"evaluate@{task}-{run}-{fold}"]
    proc = subprocess.run(cmd, cwd=ws, env=shell, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    for stage in (f"acquire@{task}", f"convert@{task}", f"plan@{task}"):
        assert lock[stage] == committed[stage], stage
    train = f"train@{task}-{run}-{fold}"
    without_outs = lambda entry: {k: v for k, v in entry.items() if k != "outs"}  # noqa: E731  (logs carry times)
    assert without_outs(lock[train]) == without_outs(committed[train])
    # the knobs the trainer read are params.yaml's, not the shell's (PGPS_NUM_EPOCHS=7, PGPS_TIME_BUDGET=30s, ...)
    (config_path,) = (ws / "data" / "nnUNet_results" / task / run).rglob("pgps_config.json")
    config = json.loads(config_path.read_text())
    budget = params["budget"]
    assert config["cpu_threads"] == params["runtime"]["threads"]  # torch's threads too (pgps.nnunet.cpu_threads)
    knobs = config["knobs"]
    assert (knobs["num_epochs"], knobs["iters_per_epoch"], knobs["save_every"]) == (
        budget["epochs"],
        budget["iters_per_epoch"],
        budget["save_every"],
    )
    assert (knobs["time_budget"], knobs["min_full_share"], knobs["seed"]) == (
        "off",
        budget["min_full_share"],
        params["seed"],
    )
    assert (knobs["augmentation"], knobs["cuda_graphs"]) == (budget["augmentation"], "off")
    dice = _run_metrics(ws, task, run, fold)["dice"]
    assert dice == json.loads((ws / METRICS).read_text())[task][run]["dice_folds"][f"fold_{fold}"]


def test_reproduce_is_complete(repro: dict) -> None:
    """The smoke profile from a hostile shell: every stage once, in dependency order, DVC clean afterwards."""
    _check_stage_order(repro)
    ws, params = repro["ws"], repro["params"]
    tasks = params["tasks"]
    assert UP_TO_DATE in _dvc("status", cwd=ws).stdout

    # what the metrics hold: every run of the grid, every fold, PGPS compared with the baseline at its compute
    metrics = json.loads((ws / METRICS).read_text())
    for task in tasks:
        rows = metrics[task]
        assert list(rows) == list(params["trainers"])
        for name, row in rows.items():
            assert 0.0 <= row["dice_mean"] <= 1.0, (name, row)
            assert sorted(row["dice_folds"]) == [f"fold_{f}" for f in params["folds"]]
        reduced = [n for n, s in params["trainers"].items() if "iters_fraction" in s]
        if reduced:  # the default profile's control at PGPS's compute (the smoke profile has none)
            assert f"vs_{reduced[0]}" in rows["pgps"], rows["pgps"]
    assert (ws / "results" / "timings.json").is_file() and (ws / "results" / "report.md").is_file()
    for png in ("learning_curves.png", "curriculum.png", "runtime_co2.png"):
        assert (ws / "results" / "plots" / png).read_bytes().startswith(b"\x89PNG")

    # the curriculum the networks actually saw (from the batches recorded by the trainers)
    task = tasks[0]
    planned = [p["patch_voxels"] for p in _run_metrics(ws, task, "constant", 0)["curve"]]
    grown = [p["patch_voxels"] for p in _run_metrics(ws, task, "pgps", 0)["curve"]]
    assert len(set(planned)) == 1 and grown[0] < planned[0] == grown[-1] and grown == sorted(grown)
    shown = json.loads(_dvc("plots", "show", "--json", cwd=ws).stdout)
    assert not shown.get("errors"), shown.get("errors")


def _cached(ws: Path, path: Path) -> Path:
    """DVC's cache file holding ``path``'s content (DVC 3: files/md5/<2>/<30>)."""
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    return ws / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]


def _reflinks(folder: Path) -> bool:
    """Does this file system share extents between files (then a copy costs no space and has its own inode)?"""
    src, dst = folder / ".reflink-probe", folder / ".reflink-probe-copy"
    src.write_bytes(b"x" * 4096)
    try:
        return subprocess.run(["cp", "--reflink=always", str(src), str(dst)], capture_output=True).returncode == 0
    finally:
        src.unlink()
        dst.unlink(missing_ok=True)


def test_outputs_are_linked_from_the_cache_not_stored_twice(repro: dict) -> None:
    """.dvc/config cache.type: every checkpoint and a preprocessed case exist once on disk (the workspace file IS
    the cache entry), read-only, and nnU-Net still wrote them (each stage writes a new folder; DVC links it after)."""
    ws, params = repro["ws"], repro["params"]
    task = params["tasks"][0]
    checkpoints = sorted((ws / "data" / "nnUNet_results").rglob("*.pth"))
    assert len(checkpoints) >= len(_grid(params))
    case = next(p for p in (ws / "data" / "nnUNet_preprocessed" / task).rglob("*") if p.suffix in (".b2nd", ".npz"))
    reflinks = _reflinks(ws)
    for path in [*checkpoints, case]:
        cached = _cached(ws, path)
        assert cached.is_file(), path
        if path.is_symlink():
            assert path.resolve() == cached.resolve(), path
        elif not reflinks:  # a hard link: one inode, the bytes once
            assert os.path.samefile(path, cached) and path.stat().st_nlink >= 2, path
        assert not path.stat().st_mode & 0o222, f"{path}: writable (DVC protects linked files)"


def test_second_repro_is_a_no_op(repro: dict) -> None:
    ws = repro["ws"]
    proc = _dvc("repro", cwd=ws)
    assert STAGE_RE.findall(proc.stdout) == []
    assert UP_TO_DATE in proc.stdout
    assert UP_TO_DATE in _dvc("status", cwd=ws).stdout


def _metric_values(path: Path) -> dict[str, float]:
    """The numbers a seeded run must reproduce (Dice, per-case Dice, per-epoch losses and pseudo Dice)."""
    data = json.loads(path.read_text())
    values = {"dice": data["dice"], **{f"case:{k}": v for k, v in data["cases"].items()}}
    for p in data["curve"]:
        for key in ("train_loss", "val_loss", "pseudo_dice", "patch_voxels"):
            values[f"epoch{p['epoch']}:{key}"] = p[key]
    return values


def _epochs_checkpointed(ws: Path, task: str, run: str, fold: int) -> int:
    """Epochs recorded by an unfinished run that already has a checkpoint to resume from (0: none yet).

    The trainer writes the record before the checkpoint, so killing right after a record update would find
    nothing to resume; the checkpoint is renamed into place complete, so its presence is the resumable state."""
    runs = ws / "data" / "nnUNet_results" / task / run
    folds = list(runs.glob(f".fold_{fold}.*.partial/Dataset*/*/fold_{fold}"))
    if not folds or not (folds[0] / "checkpoint_latest.pth").is_file():
        return 0
    try:
        return len(json.loads((folds[0] / "pgps_record.json").read_text())["epochs"])
    except (OSError, ValueError):
        return 0  # being replaced right now


def test_changing_one_trainer_reruns_only_its_stages_resumes_after_kill_and_reproduces(repro: dict) -> None:
    """Change rpss's parameters -> only its train/evaluate stages + report are stale. Its first training is
    SIGKILLed mid-curriculum; the next `dvc repro` resumes it (--c) and the seeded runs give the numbers of the
    first ones."""
    ws, params = repro["ws"], repro["params"]
    task, folds = params["tasks"][0], params["folds"]
    runs = ws / "results" / "runs" / task / "rpss"
    before = {f: _metric_values(runs / f"fold_{f}" / "metrics.json") for f in folds}
    aggregate_before = json.loads((ws / METRICS).read_text())
    changed = yaml.safe_load((ws / "params.yaml").read_text())
    # spell out rpss's validation iterations: a change of its parameters (same effective budget)
    changed["trainers"]["rpss"]["val_iters"] = changed["budget"]["val_iters"]
    (ws / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    stale = [line[:-1] for line in _dvc("status", cwd=ws).stdout.splitlines() if re.match(r"^\S.*:$", line)]
    expected = [f"{s}@{task}-rpss-{f}" for s in ("train", "evaluate") for f in folds] + ["report"]
    assert sorted(stale) == sorted(expected)

    proc = subprocess.Popen(
        [str(BIN / "dvc"), "repro"],
        cwd=ws,
        env=pipeline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    epochs = changed["budget"]["epochs"]
    first = folds[0]
    deadline, killed_at = time.monotonic() + 900, 0
    while time.monotonic() < deadline and proc.poll() is None:
        done = _epochs_checkpointed(ws, task, "rpss", first)
        if 0 < done < epochs:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = done
            break
        time.sleep(0.05)
    proc.wait()
    assert killed_at, "training finished before it could be killed mid-run"
    assert not (ws / "data" / "nnUNet_results" / task / "rpss" / f"fold_{first}").exists()  # nothing half-done

    rerun = _dvc("repro", cwd=ws)
    assert sorted(STAGE_RE.findall(rerun.stdout)) == sorted(expected)
    assert "resuming the interrupted run" in rerun.stdout
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    locked = lock["stages"][f"train@{task}-rpss-{first}"]["params"]["params.yaml"]["trainers.rpss"]
    assert locked["val_iters"] == changed["budget"]["val_iters"]
    assert UP_TO_DATE in _dvc("status", cwd=ws).stdout

    # seeded trainings of the same run (the randomly drawn RPSS curriculum; the first one killed and resumed)
    largest = 0.0
    for f in folds:
        after = _metric_values(runs / f"fold_{f}" / "metrics.json")
        assert after.keys() == before[f].keys()
        curve = json.loads((runs / f"fold_{f}" / "metrics.json").read_text())["curve"]
        assert [p["epoch"] for p in curve] == list(range(epochs))  # no gap, no duplicate after the resume
        diff = {k: (before[f][k], after[k]) for k in after if after[k] != before[f][k]}
        assert not diff, (f, diff)
        largest = max([largest] + [abs(after[k] - before[f][k]) for k in after])
    print(f"\n[killed after {killed_at} epochs; largest difference between the seeded rpss runs: {largest:.3g}]")
    # the pipeline's metrics are those of before the change again
    assert json.loads((ws / METRICS).read_text()) == aggregate_before


def test_killed_report_stage_is_not_done_and_reruns(repro: dict) -> None:
    ws, results = repro["ws"], repro["ws"] / "results"
    reference = json.loads((results / "metrics.json").read_text())
    proc = subprocess.Popen(
        [str(BIN / "dvc"), "repro", "--force", "--single-item", "report"],
        cwd=ws,
        env=pipeline_env(),
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
    # the next repro brings back a COMPLETE report (re-run, or restored from DVC's run cache), never the torn one
    rerun = _dvc("repro", cwd=ws)
    assert STAGE_RE.findall(rerun.stdout) == ["report"] or "Stage 'report' is cached" in rerun.stdout, rerun.stdout
    assert json.loads((results / "metrics.json").read_text()) == reference
    leftovers = list(results.rglob("*partial*"))
    assert all(p.name.startswith(".") and ".partial" in p.name for p in leftovers), leftovers
    # a real re-run of `pgps report` completes and sweeps the killed run's temporaries
    forced = _dvc("repro", "--force", "--single-item", "report", cwd=ws)
    assert STAGE_RE.findall(forced.stdout) == ["report"]
    assert json.loads((results / "metrics.json").read_text()) == reference
    assert not list(results.rglob("*partial*"))
    assert UP_TO_DATE in _dvc("status", cwd=ws).stdout


OUTPUTS = ("data/raw", "data/nnUNet_raw", "data/nnUNet_preprocessed", "data/nnUNet_results", "results")


def _tracked_files(ws: Path) -> dict[str, str]:
    """Every file DVC versions (not git's: results/metrics.json, cache: false, and the committed convergence files)."""
    in_git = set(subprocess.run(["git", "ls-files"], cwd=ws, capture_output=True, text=True, check=True).stdout.split())
    out = {}
    for top in OUTPUTS:
        for path in sorted((ws / top).rglob("*")):
            rel = path.relative_to(ws)
            if path.is_file() and path.name != ".gitignore" and rel != METRICS and str(rel) not in in_git:
                out[str(path.relative_to(ws))] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


def test_dvc_push_wipe_pull_gives_identical_files(repro: dict, tmp_path: Path) -> None:
    ws = repro["ws"]
    before = _tracked_files(ws)
    assert any(p.endswith("checkpoint_final.pth") for p in before) and any(p.endswith("emissions.csv") for p in before)
    assert "results/timings.json" in before and "results/plots/learning_curves.png" in before
    _dvc("remote", "add", "--local", "-f", "-d", "ci", str(tmp_path / "remote"), cwd=ws)
    _dvc("push", cwd=ws)
    metrics = (ws / METRICS).read_bytes()
    for top in (*OUTPUTS, ".dvc/cache"):
        shutil.rmtree(ws / top)
    assert _tracked_files(ws) == {}
    subprocess.run(["git", "checkout", "--", "results"], cwd=ws, check=True)  # git's files there, not DVC's
    (ws / METRICS).write_bytes(metrics)  # this run's (the smoke profile's), as DVC recorded it
    _dvc("pull", cwd=ws)
    assert _tracked_files(ws) == before and (ws / METRICS).read_bytes() == metrics
    assert UP_TO_DATE in _dvc("status", cwd=ws).stdout
