"""The grid on one machine without a scheduler: N jobs at once, one per GPU (``CUDA_VISIBLE_DEVICES``),
in DVC's dependency order. Runs in the foreground; `pgps grid status` reads its state file from another
shell. Interrupted (Ctrl-C, SIGTERM), it stops its jobs; run it again and the trainings resume from their
checkpoints (stages already recorded in dvc.lock are skipped)."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pgps.grid.dag import Grid
from pgps.grid.runner import StageRun, clear_attempts
from pgps.grid.state import save_state

COMMIT_JOB = "dvc-commit"


def detect_devices() -> list[str]:
    """GPU indices ``nvidia-smi -L`` lists (none on a machine without NVIDIA driver)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]


class _Stop(Exception):
    """SIGTERM/SIGINT reached the runner."""


def run_local(grid: Grid, folder: Path, devices: list[str], slots: int | None = None) -> dict[str, Any]:
    """Run the runnable stages; one slot per device (or ``slots`` CPU slots when ``devices`` is empty)."""
    folder = folder.resolve()
    slot_env: list[dict[str, str]] = (
        [{"CUDA_VISIBLE_DEVICES": d} for d in devices] if devices else [{} for _ in range(max(slots or 1, 1))]
    )
    jobs = {j.name: j for j in grid.runnable()}
    state: dict[str, Any] = {
        "executor": "local",
        "root": str(grid.root),
        "folder": str(folder),
        "submitted": time.time(),
        "runner_pid": os.getpid(),
        "slots": [e.get("CUDA_VISIBLE_DEVICES", "cpu") for e in slot_env],
        "jobs": {
            name: {
                "job_id": "",
                "group": j.group,
                "deps": list(j.deps),
                "outs": list(j.outs),
                "cmd": j.cmd,
                "state": "queued",
                "detail": "",
            }
            for name, j in jobs.items()
        },
    }
    if jobs:
        commit_cmd = f"{sys.executable} -m dvc commit -f -q && {sys.executable} -m dvc status"
        state["jobs"][COMMIT_JOB] = {
            "job_id": "",
            "group": COMMIT_JOB,
            "deps": sorted(jobs),
            "outs": [],
            "cmd": commit_cmd,
            "state": "queued",
            "detail": "",
        }
    lock = threading.Lock()

    def update(name: str, **fields: Any) -> None:
        with lock:
            state["jobs"][name].update(fields)
            save_state(folder, state)

    save_state(folder, state)
    clear_attempts(folder, list(state["jobs"]))
    done_q: queue.Queue[tuple[str, int, BaseException | None]] = queue.Queue()
    free = list(range(len(slot_env)))
    running: dict[str, tuple[int, StageRun]] = {}

    def work(name: str, slot: int, run: StageRun) -> None:
        try:
            run()
            done_q.put((name, slot, None))
        except BaseException as exc:  # noqa: BLE001 - reported through the state file
            done_q.put((name, slot, exc))

    def stop(signum: int, _frame: Any) -> None:
        raise _Stop(signal.Signals(signum).name)

    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            with lock:
                st = {n: j["state"] for n, j in state["jobs"].items()}
            for name, job in state["jobs"].items():
                if st[name] != "queued":
                    continue
                if any(st.get(d) in ("failed", "blocked") for d in job["deps"]):
                    update(name, state="blocked", detail="a dependency failed")
                    continue
                if not free or not all(st.get(d, "done") == "done" for d in job["deps"]):
                    continue
                slot = free.pop(0)
                wdir = jobs[name].wdir if name in jobs else str(grid.root)
                log = folder / "logs" / f"{name}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                run = StageRun(name, job["cmd"], wdir, str(folder), slot_env[slot], str(log))
                running[name] = (slot, run)
                update(
                    name,
                    state="running",
                    job_id=f"slot{slot}",
                    detail=f"slot {state['slots'][slot]}",
                    started=time.time(),
                )
                threading.Thread(target=work, args=(name, slot, run), daemon=True).start()
                st[name] = "running"
            if not running:
                break
            try:
                name, slot, exc = done_q.get(timeout=1.0)
            except queue.Empty:
                continue
            running.pop(name)
            free.append(slot)
            free.sort()
            if exc is None:
                update(name, state="done", detail="", ended=time.time())
            else:
                update(name, state="failed", detail=str(exc).splitlines()[0][:200], ended=time.time())
    except _Stop as exc:
        for name, (_slot, run) in running.items():
            run._stop_child(grace_s=30)
            update(name, state="failed", detail=f"stopped by {exc}; rerun `pgps grid submit --executor local`")
        for name, job in state["jobs"].items():
            if job["state"] == "queued":
                update(name, state="failed", detail=f"not started ({exc})")
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    return state
