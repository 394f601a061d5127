"""Job states from SLURM: squeue for what is still queued or running (with the reason it waits), sacct
(accounting) for what has ended. Mapped to the grid's words: queued, blocked, running, done, failed."""

from __future__ import annotations

import subprocess

from pgps.errors import PGPSError

_ACTIVE = {
    "PENDING": "queued",
    "REQUEUED": "queued",
    "CONFIGURING": "running",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SUSPENDED": "queued",
    "RESIZING": "running",
}
_ENDED = {
    "COMPLETED": "done",
    "FAILED": "failed",
    "CANCELLED": "failed",
    "TIMEOUT": "failed",
    "NODE_FAIL": "failed",
    "OUT_OF_MEMORY": "failed",
    "PREEMPTED": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
}


def _run(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise PGPSError(f"{cmd[0]}: not found (is this a SLURM login node?)") from None
    if proc.returncode != 0:
        raise PGPSError(f"{cmd[0]}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'failed'}")
    return proc.stdout


def job_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id (``123`` or ``123_4``) -> (grid state, SLURM state / reason)."""
    if not job_ids:
        return {}
    bases = sorted({j.split("_")[0] for j in job_ids})
    states: dict[str, tuple[str, str]] = {}
    out = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(bases), "-o", "JobID,State"])
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 2:
            continue
        jid, raw = parts[0], parts[1].split()[0] if parts[1] else ""
        if raw in _ENDED:
            states[jid] = (_ENDED[raw], raw)
        elif raw in _ACTIVE:
            states[jid] = (_ACTIVE[raw], raw)
    # squeue knows better for live jobs (sacct lags behind requeues) and tells why a job waits
    out = _run(["squeue", "-h", "-r", "-j", ",".join(bases), "-o", "%i|%T|%r"])
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 3:
            continue
        jid, raw, reason = parts
        state = _ACTIVE.get(raw, "queued")
        if reason == "DependencyNeverSatisfied":
            state, raw = "blocked", "dependency failed"
        states[jid] = (state, raw if reason in ("None", "") or state != "queued" else f"{raw} ({reason})")
    return {j: states.get(j, ("unknown", "not in squeue/sacct")) for j in job_ids}
