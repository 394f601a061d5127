"""`pgps grid status`: per run queued / blocked / running / done / failed, the curriculum stage and epoch
from its run record, the time left at its measured pace, and where its log is."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pgps.grid.progress import find_records, read_progress
from pgps.grid.runner import read_attempts

STATES = ("queued", "blocked", "running", "done", "failed", "unknown")


def log_files(state: dict[str, Any], name: str, job_id: str) -> list[str]:
    """Where a job's output goes: submitit's per-job stdout/stderr on SLURM, one file per stage locally."""
    folder = Path(state["folder"])
    if state["executor"] != "slurm":
        return [str(folder / "logs" / f"{name}.log")]
    if not job_id:
        return []
    from submitit.core.utils import JobPaths

    paths = JobPaths(folder / "%j", job_id=job_id, task_id=0)
    return [str(paths.stdout), str(paths.stderr)]


def _short(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _local_states(state: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The local runner writes its own states; a 'running' job whose runner died is reported as failed."""
    runner_pid = state.get("runner_pid")
    alive = False
    if isinstance(runner_pid, int):
        try:
            os.kill(runner_pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
    out = {}
    for name, job in state["jobs"].items():
        st = job.get("state", "queued")
        detail = job.get("detail", "")
        if st in ("queued", "running") and not alive:
            st, detail = "failed", "runner stopped (rerun `pgps grid submit --executor local` to resume)"
        out[name] = (st, detail)
    return out


def collect(state: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per job of the grid."""
    jobs = state["jobs"]
    if state["executor"] == "slurm":
        from pgps.grid.sacct import job_states

        ids = [j["job_id"] for j in jobs.values()]
        by_id = job_states(ids)
        states = {name: by_id[j["job_id"]] for name, j in jobs.items()}
    else:
        states = _local_states(state)
    folder = Path(state["folder"])
    rows = []
    for name, job in jobs.items():
        st, detail = states[name]
        row: dict[str, Any] = {
            "run": name,
            "job_id": job.get("job_id", ""),
            "state": st,
            "detail": detail,
            "attempts": sum(1 for a in read_attempts(folder, name) if a["event"] == "start"),
            "stage": None,
            "num_stages": None,
            "epoch": None,
            "num_epochs": None,
            "seconds_left": None,
            "logs": log_files(state, name, job.get("job_id", "")),
        }
        records = find_records(job.get("outs", []))
        progs = [p for p in (read_progress(r) for r in records) if p is not None]
        if progs:
            p = progs[0]
            row.update(
                stage=p.stage,
                num_stages=p.num_stages,
                epoch=p.epochs_done,
                num_epochs=p.num_epochs,
                seconds_left=0.0 if st == "done" else p.seconds_left(),
                resumes=p.resumes,
                record=p.record,
            )
        elif st == "done":
            row["seconds_left"] = 0.0
        rows.append(row)
    return rows


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def _log_cell(logs: list[str]) -> str:
    """stdout and stderr of one job as ``dir/123_4_0_log.{out,err}``; a single log as it is."""
    short = [_short(p) for p in logs]
    if len(short) == 2 and short[0].endswith(".out") and short[1] == short[0][:-4] + ".err":
        return short[0][:-4] + ".{out,err}"
    return " ".join(short) or "-"


def format_table(rows: list[dict[str, Any]], every: list[dict[str, Any]] | None = None) -> str:
    """``rows`` as a table; the last line counts the states of ``every`` row (all of them when filtered)."""
    header = ("run", "job", "state", "stage", "epoch", "left", "tries", "log", "detail")
    lines = [header]
    for r in rows:
        stage = "-" if r["stage"] is None else f"{r['stage'] + 1}/{r['num_stages'] or '?'}"
        epoch = "-" if r["epoch"] is None else f"{r['epoch']}/{r['num_epochs'] or '?'}"
        lines.append(
            (
                r["run"],
                str(r["job_id"]),
                r["state"],
                stage,
                epoch,
                _fmt_seconds(r["seconds_left"]),
                str(r["attempts"]),
                _log_cell(r.get("logs", [])),
                r["detail"],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    counts: dict[str, int] = {}
    for r in rows if every is None else every:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    total = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    shown = "" if every is None or len(rows) == len(every) else f" ({len(rows)} shown)"
    text.append(f"{total}{shown}" if total else "no jobs")
    return "\n".join(text)
