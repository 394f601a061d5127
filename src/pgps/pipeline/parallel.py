"""The pipeline's stages, several at once on one machine, each recorded in dvc.lock as soon as it is done.

`dvc repro` runs one stage at a time. On a small CPU machine that wastes cores: a training of the reduced task
does not keep two threads busy (its tensors are tiny), and everything around it (interpreter start-up and
imports, nnU-Net's export workers, evaluation, DVC's hashing) is single-threaded. With every process pinned to
one thread (params.yaml ``runtime.threads: 1``), two stages at once use a 2-core machine fully. The numbers
are the same bits as `dvc repro` gives: a stage computes from its inputs, params and thread count alone, not
from what runs beside it.

The stages and their order are DVC's own (:func:`pgps.grid.dag.load_grid`: the stages dvc.lock does not match
and everything downstream); each runs the command `dvc repro` would run, in its working directory, with its
output in ``logs/reproduce/<stage>.log``. A stage that ends is committed at once (``dvc commit``, in process),
so an interrupted run loses no finished stage. A failure stops new starts, lets the running stages finish and
names the failing stage with the tail of its log.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from pgps.errors import PGPSError
from pgps.grid.dag import StageJob

LOG_DIR = Path("logs") / "reproduce"
TAIL_LINES = 25


def commit_stage(root: Path, stage: str) -> None:
    """Record one finished stage in dvc.lock (and its outputs in DVC's cache), as `dvc repro` would."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)  # not one "Updating lock file" line per stage
    try:
        with Repo(str(root)) as repo:
            repo.commit(stage, force=True)
    except DvcException as exc:
        raise PGPSError(f"dvc commit {stage}: {exc}") from None


def _log_name(stage: str) -> str:
    return stage.replace("/", "_") + ".log"


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-TAIL_LINES:])


def run_stages(
    root: Path,
    jobs: list[StageJob],
    slots: int,
    on_start: Callable[[str], None],
    on_end: Callable[[str, int], None],
) -> None:
    """Run ``jobs`` (dependency-ordered; ``deps`` name the jobs each waits for) ``slots`` at a time."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    log_dir = root / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    waiting = {job.name: job for job in jobs}
    running: dict[str, subprocess.Popen[bytes]] = {}
    finished: set[str] = set()
    ended: queue.Queue[tuple[str, int]] = queue.Queue()
    failed: str | None = None

    def wait(name: str, proc: subprocess.Popen[bytes]) -> None:
        ended.put((name, proc.wait()))

    try:
        while waiting or running:
            ready = [n for n, j in waiting.items() if all(d in finished for d in j.deps)]
            while failed is None and ready and len(running) < slots:
                job = waiting.pop(ready.pop(0))
                on_start(job.name)
                with open(log_dir / _log_name(job.name), "wb") as log:
                    log.write(f"+ (cd {job.wdir} && {job.cmd})\n".encode())
                    log.flush()
                    proc = subprocess.Popen(
                        job.cmd, shell=True, cwd=job.wdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
                running[job.name] = proc
                threading.Thread(target=wait, args=(job.name, proc), daemon=True).start()
            if not running:
                break  # a failure left the rest waiting
            name, returncode = ended.get()  # a stage's process has exited
            del running[name]
            on_end(name, returncode)
            if returncode == 0:
                commit_stage(root, name)
                finished.add(name)
            elif failed is None:
                failed = name
    except BaseException:
        for proc in running.values():
            _stop(proc)
        raise
    if failed is not None:
        failed_log = log_dir / _log_name(failed)
        shown = failed_log.relative_to(root)
        print(f"--- last lines of {shown} ---\n{_tail(failed_log)}", file=sys.stderr, flush=True)
        raise PGPSError(f"stage {failed} failed; its output: {shown} (its last lines are above)")


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM the stage's process group (a training checkpoints and stops), SIGKILL it after ``grace_s``."""
    for sig, patience in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=patience)
            return
        except subprocess.TimeoutExpired:
            continue
