"""`pgps grid submit|status|requeue`: the experiment grid (the DVC pipeline's stages as jobs) on SLURM
through submitit, or on the GPUs of one machine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pgps import fileio
from pgps.errors import PGPSError
from pgps.grid.config import GridConfig, add_resource_flags, apply_flags, load_grid_config
from pgps.grid.dag import Grid, StageJob
from pgps.grid.state import DEFAULT_FOLDER, load_state
from pgps.grid.status import STATES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="grid_command", metavar="ACTION", required=True)
    p = sub.add_parser("submit", help="submit every stage of the pipeline that is not up to date")
    p.add_argument(
        "--executor",
        choices=("slurm", "local"),
        default="slurm",
        help="slurm: sbatch through submitit (returns at once); local: run here, one job per GPU",
    )
    p.add_argument("--profile", help="apply profiles/NAME.yaml to params.yaml first (as `pgps reproduce` does)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="where the grid: section lives")
    p.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="job logs and the grid's state file")
    p.add_argument("--devices", help="local: GPU ids, one job per id at once (default: every GPU nvidia-smi lists)")
    p.add_argument("--slots", type=int, help="local without GPUs: jobs at once (default 1)")
    p.add_argument("--dry-run", action="store_true", help="print the jobs and their requests, submit nothing")
    add_resource_flags(p)
    s = sub.add_parser("status", help="per run: queued/running/done/failed, stage, epoch, time left, log")
    s.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="job logs and the grid's state file")
    s.add_argument("--json", action="store_true", help="machine-readable rows")
    s.add_argument(
        "--state",
        action="append",
        choices=STATES,
        help="only runs in this state (repeatable), e.g. --state failed for what to look at and requeue",
    )
    r = sub.add_parser("requeue", help="put cancelled/failed/running runs back in the queue (they resume)")
    r.add_argument("runs", nargs="+", help="run names as `pgps grid status` lists them")
    r.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="job logs and the grid's state file")
    c = sub.add_parser("cancel", help="scancel every job of the grid that has not ended")
    c.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="job logs and the grid's state file")


def _active(folder: Path) -> list[str]:
    """Runs of an earlier submission in ``folder`` that are still queued, blocked or running."""
    if not (folder / "grid.json").is_file():
        return []
    from pgps.grid.status import collect

    return [r["run"] for r in collect(load_state(folder)) if r["state"] in ("queued", "blocked", "running")]


def _apply_profile(name: str) -> None:
    from pgps.pipeline.reproduce import apply_profile  # the pipeline's own profile logic

    apply_profile(name)


def _submit(args: argparse.Namespace) -> int:
    from pgps.grid.dag import load_grid

    saved = args.params.read_bytes() if args.profile and args.dry_run and args.params.is_file() else None
    try:
        if args.profile:
            _apply_profile(args.profile)
        config = apply_flags(load_grid_config(args.params), args)
        grid = load_grid(Path.cwd())
    finally:
        if saved is not None:  # a dry run leaves params.yaml as it was
            fileio.write_bytes(args.params, saved)
    groups = {j.group for j in grid.jobs.values()}
    unknown = sorted({name for name, _ in config.stages} - groups)
    if unknown and config.stages_explicit:
        raise PGPSError(
            f"{args.params}: grid.stages.{unknown[0]}: not a stage of dvc.yaml (stages: {', '.join(sorted(groups))})"
        )
    runnable = grid.runnable()
    if not args.dry_run:
        active = _active(args.folder)
        if active:
            raise PGPSError(
                f"{args.folder / 'grid.json'}: {len(active)} jobs of the last submission have not ended "
                f"({', '.join(active[:3])}{', …' if len(active) > 3 else ''}); wait, `pgps grid cancel`, "
                "or submit with another --folder"
            )
    if args.dry_run:
        for line in _dry_run(grid, config, runnable, args):
            print(line)
        return 0
    if not runnable:
        print("every stage is up to date (dvc.lock): nothing to submit")
        return 0
    if args.executor == "slurm":
        from pgps.grid.slurm import submit_slurm

        state = submit_slurm(grid, config, args.folder)
        print(
            f"submitted {len(state['jobs'])} jobs ({len(grid.jobs) - len(runnable)} stages already up to date); "
            f"follow with `pgps grid status --folder {args.folder}`"
        )
        return 0
    from pgps.grid.local import detect_devices, run_local

    devices = [d for d in args.devices.split(",") if d] if args.devices else ([] if args.slots else detect_devices())
    state = run_local(grid, args.folder, devices, args.slots)
    failed = [n for n, j in state["jobs"].items() if j["state"] != "done"]
    if failed:
        raise PGPSError(
            f"{args.folder / 'grid.json'}: {len(failed)} jobs did not finish ({', '.join(failed[:3])}"
            f"{', …' if len(failed) > 3 else ''}); logs in {args.folder / 'logs'}"
        )
    print(f"all {len(state['jobs'])} jobs done; dvc.lock records them (`dvc status` is clean)")
    return 0


def _dry_run(grid: Grid, config: GridConfig, runnable: list[StageJob], args: argparse.Namespace) -> list[str]:
    """What a submission would do: per stage its request; on SLURM also the sbatch calls and the totals."""
    summary = f"{len(runnable)} stages to run ({len(grid.jobs) - len(runnable)} stages already up to date)"
    if args.executor == "slurm" and runnable:
        from pgps.grid.slurm import describe, plan_submissions

        lines = describe(plan_submissions(grid, config, runnable), config, args.folder.resolve())
        return [*lines[:-1], summary, lines[-1]]
    lines = []
    for job in runnable:
        res = config.resources(job.group)
        after = f" after {', '.join(job.deps)}" if job.deps else ""
        lines.append(f"{job.name}: {res.cpus} cpus, {res.mem_gb:g} GB, {res.gpus} gpus, {res.time_min} min{after}")
    return [*lines, summary]


def main(args: argparse.Namespace) -> int:
    if args.grid_command == "submit":
        return _submit(args)
    state = load_state(args.folder)
    if args.grid_command == "status":
        from pgps.grid.status import collect, format_table

        rows = collect(state)
        shown = [r for r in rows if r["state"] in args.state] if args.state else rows
        print(json.dumps(shown, indent=1) if args.json else format_table(shown, rows))
        return 0
    if args.grid_command == "cancel":
        from pgps.grid.requeue import cancel

        print(cancel(state))
        return 0
    from pgps.grid.requeue import requeue

    for line in requeue(state, args.runs):
        print(line)
    return 0
