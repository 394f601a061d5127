"""What a grid job executes: one DVC stage's command, as a submitit Checkpointable.

When SLURM signals a time-out or preemption, submitit calls :meth:`StageRun.checkpoint`: we stop the
stage's process and requeue the SAME command. Training stages resume by themselves from nnU-Net's latest
checkpoint (``--c``) at the stage of the curriculum that checkpoint belongs to; the other stages are short
and idempotent. A job killed outright (scancel, node failure) and requeued by hand or by the scheduler
runs the same command again, with the same effect.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

from pgps.errors import PGPSError

ATTEMPTS_DIR = "attempts"


def _job_id() -> str:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID", f"local-{os.getpid()}")


class StageRun(Checkpointable):
    """Run one stage command in its working directory; a non-zero exit is the job's failure."""

    def __init__(
        self, name: str, cmd: str, wdir: str, grid_dir: str, env: dict[str, str] | None = None, log: str | None = None
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.wdir = wdir
        self.grid_dir = grid_dir
        self.env = dict(env or {})
        self.log = log  # None: the job's own stdout (SLURM's log file)
        self._proc: subprocess.Popen[bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_proc"] = None  # a running process cannot travel with the pickle
        return state

    def _log_attempt(self, event: str, **extra: Any) -> None:
        """Append-only attempt log (one JSON line per start/end): the status view and the tests read it."""
        path = Path(self.grid_dir) / ATTEMPTS_DIR / (self.name.replace("/", "_") + ".jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"event": event, "time": time.time(), "job_id": _job_id(), "host": os.uname().nodename}
        entry.update(extra)
        with open(path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def __call__(self) -> dict[str, Any]:
        env = dict(os.environ)
        env.update(self.env)
        # the stage commands call `pgps`/`dvc`: those of the environment running this job come first
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        self._log_attempt("start", cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"))
        start = time.time()
        out = open(self.log, "ab") if self.log else None  # noqa: SIM115 - closed below
        try:
            banner = f"+ (cd {self.wdir} && {self.cmd})\n"
            if out:
                out.write(banner.encode())
                out.flush()
            else:
                print(banner, end="", flush=True)
            self._proc = subprocess.Popen(
                self.cmd,
                shell=True,
                cwd=self.wdir,
                env=env,
                start_new_session=True,
                stdout=out,
                stderr=out,
                preexec_fn=_ignore_preemption_signal,  # noqa: PLW1509 - one signal call, no lock taken
            )
            try:
                rc = self._proc.wait()
            finally:
                self._stop_child()
        finally:
            if out:
                out.close()
        self._log_attempt("end", returncode=rc, seconds=time.time() - start)
        if rc != 0:
            raise PGPSError(f"stage {self.name}: `{self.cmd}` failed (exit {rc}) in {self.wdir}")
        return {"stage": self.name, "seconds": time.time() - start}

    def _stop_child(self, grace_s: float = 20.0) -> None:
        """SIGTERM the stage's process group, SIGKILL what is left after ``grace_s``.

        Called from submitit's signal handler while ``Popen.wait`` is interrupted in the same thread, so it
        must not wait through ``Popen`` (its lock is held): it watches /proc instead and leaves the reaping
        to the interrupted wait."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        for sig, patience in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.time() + patience
            while time.time() < deadline:
                if not _alive(proc.pid):
                    return
                time.sleep(0.1)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Time-out/preemption: the stage's own checkpoint is on disk; stop it and requeue the same command."""
        self._stop_child()
        self._log_attempt("checkpoint")
        again = StageRun(self.name, self.cmd, self.wdir, self.grid_dir, self.env, self.log)
        return DelayedSubmission(again, *args, **kwargs)


def _ignore_preemption_signal() -> None:
    """In the stage's process, before exec: SIGUSR2 ignored (inherited by everything it starts). SLURM sends the
    time-limit signal to EVERY process of the job step, so without this the stage's process could die of it
    (exit 140) before submitit's handler in this process stops it and requeues the job -- the job then counted as
    failed (seen in CI under load). The handler alone decides: it stops the stage with SIGTERM, then SIGKILL."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def clear_attempts(grid_dir: Path, names: list[str]) -> None:
    """A new submission starts the attempt count of its jobs afresh."""
    for name in names:
        (grid_dir / ATTEMPTS_DIR / (name.replace("/", "_") + ".jsonl")).unlink(missing_ok=True)


def read_attempts(grid_dir: Path, name: str) -> list[dict[str, Any]]:
    """The attempt log of one stage (empty when it never started)."""
    path = grid_dir / ATTEMPTS_DIR / (name.replace("/", "_") + ".jsonl")
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    return out
