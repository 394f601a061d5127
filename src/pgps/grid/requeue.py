"""`pgps grid requeue RUN…`: put a training (or any stage) back in the queue after it was cancelled, failed
or while it runs, and let the jobs that wait for it wait again. `pgps grid cancel`: stop the whole grid.

SLURM 22.05 marks a dependency on a cancelled job as never satisfiable and does not look again once that
job is requeued, so the dependents' ``afterok`` lists are set anew from the grid's state file.
"""

from __future__ import annotations

import subprocess
from typing import Any

from pgps.errors import PGPSError


def _scontrol(*args: str) -> None:
    proc = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise PGPSError(f"scontrol {' '.join(args)}: {proc.stderr.strip() or 'failed'}")


def requeue(state: dict[str, Any], runs: list[str]) -> list[str]:
    """Requeue ``runs`` (stage names from the state file); returns what was done, one line each."""
    if state["executor"] != "slurm":
        raise PGPSError("grid.json: requeue is for SLURM grids; a local grid resumes with `pgps grid submit`")
    jobs = state["jobs"]
    unknown = [r for r in runs if r not in jobs]
    if unknown:
        raise PGPSError(f"grid.json: no run {unknown[0]!r} in this grid (see `pgps grid status`)")
    from pgps.grid.sacct import job_states

    done: list[str] = []
    for run in runs:
        _scontrol("requeue", jobs[run]["job_id"])
        done.append(f"requeued {run} (job {jobs[run]['job_id']})")
    # every job still waiting downstream of them gets its dependency list back, pointing at the (requeued) jobs:
    # single array tasks where the submission tied whole arrays (SLURM splits that task off its array)
    ids = {name: j["job_id"] for name, j in jobs.items()}
    current = job_states(list(ids.values()))
    for run in runs:  # requeued: waiting again, whatever sacct still remembers
        current[ids[run]] = ("queued", "requeued")
    downstream = _dependents(jobs, runs)
    for name, job in jobs.items():
        if name not in downstream or current[job["job_id"]][0] not in ("queued", "blocked"):
            continue
        # finished dependencies are left out: SLURM forgets old jobs (MinJobAge) and would reject their ids
        waiting = sorted({ids[d] for d in job["deps"] if d in ids and current[ids[d]][0] != "done"})
        _scontrol(
            "update", f"jobid={job['job_id']}", "dependency=" + ("afterok:" + ":".join(waiting) if waiting else "")
        )
        done.append(f"dependencies of {name} (job {job['job_id']}) set again")
    return done


def _dependents(jobs: dict[str, Any], runs: list[str]) -> set[str]:
    """Every job that waits, directly or through others, for one of ``runs``."""
    waiting_for: dict[str, list[str]] = {}
    for name, job in jobs.items():
        for dep in job.get("deps", []):
            waiting_for.setdefault(dep, []).append(name)
    found: set[str] = set()
    frontier = list(runs)
    while frontier:
        for child in waiting_for.get(frontier.pop(), []):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def cancel(state: dict[str, Any]) -> str:
    """scancel the grid's jobs that have not ended (SLURM only; a local grid stops with Ctrl-C)."""
    if state["executor"] != "slurm":
        raise PGPSError("grid.json: cancel is for SLURM grids; stop a local grid with Ctrl-C (SIGTERM)")
    from pgps.grid.sacct import job_states

    ids = [j["job_id"] for j in state["jobs"].values()]
    live = sorted(j for j, (st, _) in job_states(ids).items() if st in ("queued", "blocked", "running"))
    if live:
        proc = subprocess.run(["scancel", *live], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise PGPSError(f"scancel: {proc.stderr.strip() or 'failed'}")
    return f"cancelled {len(live)} jobs" if live else "no job of this grid is queued or running"
