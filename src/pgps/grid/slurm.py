"""Submit the grid to SLURM through submitit: one job per DVC stage, job arrays for the trainings of
one task, `afterok` dependencies along DVC's graph, and a final job that records the results in
dvc.lock (`dvc commit`) so `dvc repro` afterwards has nothing left to run."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pgps.errors import PGPSError
from pgps.grid.config import GridConfig, Resources
from pgps.grid.dag import Grid, StageJob
from pgps.grid.runner import StageRun, clear_attempts
from pgps.grid.state import save_state

COMMIT_JOB = "dvc-commit"


def _parameters(config: GridConfig, res: Resources, name: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "timeout_min": res.time_min,
        "slurm_job_name": f"pgps-{name}",
        "cpus_per_task": res.cpus,
        "mem_gb": res.mem_gb,
        "slurm_signal_delay_s": min(config.signal_delay_s, max(res.time_min * 60 // 2, 1)),
        "slurm_array_parallelism": config.array_parallelism,
        "tasks_per_node": 1,
        "nodes": 1,
    }
    for key in ("partition", "account", "qos"):
        value = getattr(config, key)
        if value:
            params[f"slurm_{key}"] = value
    if res.gpus > 0:
        if config.gres:
            params["slurm_gres"] = config.gres
        else:
            params["gpus_per_node"] = res.gpus
    return params


def _executor(folder: Path, max_requeues: int) -> Any:
    import submitit

    try:
        return submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm", slurm_max_num_timeout=max_requeues)
    except RuntimeError as exc:
        raise PGPSError(f"sbatch: SLURM is not available here ({exc})") from None


def _submit(
    folder: Path,
    max_requeues: int,
    jobs: list[StageJob],
    runs: list[StageRun],
    params: dict[str, Any],
    after: list[str],
):
    """One sbatch (a job array when several runs share request and dependencies); fresh executor each time
    so no request (a GPU, say) leaks from one batch into the next."""
    executor = _executor(folder, max_requeues)
    # a failed dependency leaves its dependents pending (not cancelled): `pgps grid requeue` can still rescue them
    extra = {"dependency": "afterok:" + ":".join(after), "kill-on-invalid-dep": "no"} if after else {}
    executor.update_parameters(**params, slurm_additional_parameters=extra)
    try:
        if len(runs) == 1:
            return [executor.submit(runs[0])]
        with executor.batch():
            submitted = [executor.submit(run) for run in runs]
        return submitted
    except Exception as exc:  # submitit raises plain Exceptions carrying sbatch's stderr
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "error" in ln.lower()), first[-1] if first else repr(exc))
        raise PGPSError(f"sbatch rejected {jobs[0].name}: {detail.strip()}") from None


def submit_slurm(grid: Grid, config: GridConfig, folder: Path, dry_run: bool = False) -> dict[str, Any]:
    """Submit every runnable stage; returns (and saves) the state `pgps grid status` reads."""
    folder = folder.resolve()
    jobs = grid.runnable()
    state: dict[str, Any] = {
        "executor": "slurm",
        "root": str(grid.root),
        "folder": str(folder),
        "submitted": time.time(),
        "jobs": {},
    }
    if not jobs:
        save_state(folder, state)
        return state
    job_ids: dict[str, str] = {}
    clear_attempts(folder, [j.name for j in jobs] + [COMMIT_JOB])
    try:
        _submit_all(grid, config, folder, jobs, job_ids, state, dry_run)
    except BaseException:
        # no half-submitted grid: what went in before the failure is cancelled again
        if job_ids and not dry_run:
            subprocess.run(["scancel", *sorted(set(job_ids.values()))], capture_output=True, timeout=60)
        raise
    if not dry_run:
        save_state(folder, state)
    return state


def _submit_all(
    grid: Grid,
    config: GridConfig,
    folder: Path,
    jobs: list[StageJob],
    job_ids: dict[str, str],
    state: dict[str, Any],
    dry_run: bool,
) -> None:
    # batches: jobs of one dvc.yaml stage that wait for the same jobs -> one job array
    pending = list(jobs)
    while pending:
        ready = [j for j in pending if all(d in job_ids for d in j.deps)]
        batches: dict[tuple[str, tuple[str, ...]], list[StageJob]] = defaultdict(list)
        for job in ready:
            batches[(job.group, job.deps)].append(job)
        for (group, deps), members in batches.items():
            res = config.resources(group)
            params = _parameters(config, res, group)
            runs = [StageRun(j.name, j.cmd, j.wdir, str(folder)) for j in members]
            after = sorted({job_ids[d] for d in deps})
            if dry_run:
                ids = [f"dry-{len(job_ids) + i}" for i in range(len(members))]
            else:
                ids = [s.job_id for s in _submit(folder, config.max_requeues, members, runs, params, after)]
            for job, job_id in zip(members, ids, strict=True):
                job_ids[job.name] = job_id
                state["jobs"][job.name] = {
                    "job_id": job_id,
                    "group": job.group,
                    "deps": list(job.deps),
                    "outs": list(job.outs),
                    "cmd": job.cmd,
                    "resources": asdict(res),
                }
        pending = [j for j in pending if j.name not in job_ids]
    # the last job: record every stage's outputs in dvc.lock once all of them succeeded
    commit_cmd = f"{sys.executable} -m dvc commit -f -q && {sys.executable} -m dvc status"
    commit = StageRun(COMMIT_JOB, commit_cmd, str(grid.root), str(folder))
    params = _parameters(config, config.default, COMMIT_JOB)
    after = sorted(set(job_ids.values()))
    commit_job = StageJob(COMMIT_JOB, COMMIT_JOB, commit_cmd, str(grid.root), tuple(sorted(job_ids)), ())
    commit_id = (
        "dry-commit"
        if dry_run
        else _submit(folder, config.max_requeues, [commit_job], [commit], params, after)[0].job_id
    )
    state["jobs"][COMMIT_JOB] = {
        "job_id": commit_id,
        "group": COMMIT_JOB,
        "deps": sorted(job_ids),
        "outs": [],
        "cmd": commit_cmd,
        "resources": asdict(config.default),
    }
