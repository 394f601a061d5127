"""`pgps reproduce [--profile NAME] [--list]`: the whole pipeline (`dvc repro`) in this workspace, then the table.

A profile is a complete params file under ``profiles/``. Applying it copies it over ``params.yaml`` (after the
same validation, and never over a params.yaml with edits of its own: :mod:`pgps.pipeline.profiles`), because
DVC reads its parameters from params.yaml, records their values in dvc.lock and re-runs exactly the stages
whose parameters changed; this needs neither an edit of dvc.yaml nor git. ``--list`` shows a profile's grid
and what it would cost without applying it: it changes nothing on disk (DVC expands the grid in a temporary
copy of the pipeline definition).

While DVC runs, every stage gets one line with its place in the whole and an ETA
(:mod:`pgps.pipeline.stage_progress`). With one job that is `dvc repro` itself, its and the stages' output
passed through; a CPU profile with pinned threads runs DVC's stages several at once
(:mod:`pgps.pipeline.parallel`), the same commands and the same bits, recorded in dvc.lock as `dvc repro` would.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pgps import fileio
from pgps.errors import PGPSError
from pgps.params import PARAMS_FILE, Params, load_params
from pgps.pipeline.estimate import describe as describe_cost
from pgps.pipeline.parallel import LOG_DIR, run_stages
from pgps.pipeline.profiles import PROFILES_DIR, apply_profile, checked_profile, profile_path
from pgps.pipeline.stage_progress import RUNNING, StageProgress, describe

__all__ = ["PROFILES_DIR", "add_arguments", "apply_profile", "main"]

#: more trainings at once gain little on the reduced task, and each holds about 1.5 GB of memory
MAX_AUTO_JOBS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", default=None, help="apply profiles/NAME.yaml (e.g. full: the paper's grid) to params.yaml first"
    )
    parser.add_argument("--force", action="store_true", help="re-run every stage (dvc repro --force)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="stages at once (default: on a CPU profile with pinned threads, the cores over runtime.threads, at most "
        f"{MAX_AUTO_JOBS}; else 1); 1 = `dvc repro` itself",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the stages of params.yaml (or of --profile NAME) and what they would cost; run and change nothing",
    )


def default_jobs(params: Params, cores: int | None = None) -> int:
    """Stages at once: as many as the machine's cores hold at the pinned thread count (a CPU profile), else 1
    (a GPU profile's stages share the one GPU; an unpinned thread count takes every core)."""
    threads = params.runtime["threads"]
    if params.device != "cpu" or not threads:
        return 1
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, min(cores // threads, MAX_AUTO_JOBS))


def dvc_executable() -> str:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else "dvc"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"  # DVC's lines reach the progress reader as they are written
    return env


def list_stages(params_file: Path) -> list[str]:
    """DVC's own expansion of dvc.yaml against ``params_file``, done in a temporary copy (nothing here changes)."""
    with tempfile.TemporaryDirectory(prefix="pgps-list-") as tmp:
        root = Path(tmp)
        shutil.copy2("dvc.yaml", root / "dvc.yaml")
        shutil.copy2(params_file, root / "params.yaml")
        for cmd in ([dvc_executable(), "init", "--no-scm", "-q"], [dvc_executable(), "stage", "list", "--name-only"]):
            proc = subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True)
            if proc.returncode != 0:
                message = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
                raise PGPSError(f"dvc.yaml with {params_file}: `dvc {cmd[1]}` failed: {message[-1] if message else ''}")
    return proc.stdout.split()


def show_list(profile: str | None) -> None:
    params_file = checked_profile(profile) if profile else PARAMS_FILE
    params = load_params(params_file)
    stages = list_stages(params_file)
    for name in stages:
        print(name)
    print(f"\n{params_file}: profile {params.profile}, {len(stages)} stages; nothing was run or changed")
    for line in describe_cost(params):
        print(line)


def planned_stages(force: bool) -> list[str]:
    """The stages `dvc repro` is expected to run: all of them with ``force``, else those dvc.lock does not
    match and everything downstream of them."""
    from pgps.grid.dag import load_grid

    grid = load_grid(Path.cwd(), check_status=not force)
    return [job.name for job in grid.runnable()]


def run_dvc_repro(force: bool) -> float:
    """`dvc repro`, its output passed through, plus one progress line per stage; returns the wall seconds."""
    planned = planned_stages(force)
    progress = StageProgress(planned)
    cmd = [dvc_executable(), "repro"] + (["--force"] if force else [])
    print("+ " + " ".join(["dvc", *cmd[1:]]) + f"  ({len(planned)} stages to run)", flush=True)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    with proc.stdout:
        for line in proc.stdout:
            match = RUNNING.match(line)
            if match:
                print(progress.started(match.group(1)), flush=True)
            sys.stdout.write(line)
            sys.stdout.flush()
    returncode = proc.wait()
    elapsed = progress.finished()
    if returncode != 0:
        raise PGPSError(f"dvc repro failed (exit {returncode}); the failing stage's message is above")
    return elapsed


def run_in_parallel(force: bool, jobs: int) -> float:
    """DVC's stages ``jobs`` at a time (:mod:`pgps.pipeline.parallel`), each committed to dvc.lock when done."""
    from pgps.grid.dag import load_grid

    root = Path.cwd()
    todo = load_grid(root, check_status=not force).runnable()
    progress = StageProgress([job.name for job in todo], jobs=jobs)
    print(
        f"+ {len(todo)} stages of dvc.yaml (the commands `dvc repro` runs), {jobs} at a time, each recorded in "
        f"dvc.lock when done; their output: {LOG_DIR}/",
        flush=True,
    )

    def ended(stage: str, returncode: int) -> None:
        seconds = progress.ended(stage)
        if returncode != 0:
            print(f"  {describe(stage)}: FAILED (exit {returncode}) after {seconds:.0f} s", flush=True)

    run_stages(root, todo, jobs, lambda stage: print(progress.started(stage), flush=True), ended)
    if not todo:
        print("Data and pipelines are up to date.", flush=True)
    return progress.finished()


def relink() -> None:
    """Workspace outputs as links to DVC's cache (.dvc/config ``cache.type``), not second copies.

    DVC links a file output when it commits it, but leaves the files of a committed FOLDER as they are (all of
    this pipeline's outputs are folders), so checkpoints and preprocessed data would take their space twice;
    `dvc checkout --relink` replaces them by links (read-only, as DVC protects linked files)."""
    proc = subprocess.run([dvc_executable(), "checkout", "--relink", "-q"], env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        message = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise PGPSError(f"dvc checkout --relink failed: {message[-1] if message else proc.returncode}")


def summary(results: Path = Path("results")) -> str:
    """The terminal table from the report's two JSON files (deterministic metrics + measured timings)."""
    from pgps.report.tables import baseline_of, summary_table

    metrics_file, timings_file = results / "metrics.json", results / "timings.json"
    if not metrics_file.is_file():
        raise PGPSError(f"{metrics_file}: not found after dvc repro (did the report stage run?)")
    metrics = fileio.read_json(metrics_file, "written by the report stage")
    timings = fileio.read_json(timings_file, "written by the report stage") if timings_file.is_file() else None
    return summary_table(metrics, baseline_of(metrics, str(metrics_file)), timings)


def main(args: argparse.Namespace) -> int:
    if not Path("dvc.yaml").is_file() or not Path(".dvc").is_dir():
        raise PGPSError(f"{Path.cwd()}: no dvc.yaml and .dvc/ here; run `pgps reproduce` from the repository root")
    if args.list:
        show_list(args.profile)
        return 0
    if args.profile:
        changed = apply_profile(args.profile)
        source = profile_path(args.profile)
        print(
            f"profile {args.profile}: {PARAMS_FILE} "
            + (f"replaced by {source} (--profile default goes back)" if changed else f"already is {source}"),
            flush=True,
        )
    params = load_params(PARAMS_FILE)  # one clear error before DVC starts anything
    jobs = args.jobs if args.jobs is not None else default_jobs(params)
    if jobs < 1:
        raise PGPSError(f"--jobs {jobs}: must be at least 1")
    elapsed = run_dvc_repro(args.force) if jobs == 1 else run_in_parallel(args.force, jobs)
    relink()
    print()
    print(summary())
    print(f"\npipeline wall time: {elapsed:.0f} s; report: results/report.md, plots: results/plots/")
    return 0
