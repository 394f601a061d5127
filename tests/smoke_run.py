"""The smoke profile's finished pipeline run, made once per `make test` and shared by its three users: the DVC
behaviour tests (tests/test_pipeline_dvc.py), the Docker stage (the image's `reproduce` re-runs one training of it)
and the SLURM stage (the grid re-runs one training of it). CI time: one smoke run and one smoke task preparation
instead of three runs and two preparations.

`make test` runs two pytest processes; scripts/run-tests.sh exports PGPS_TEST_SHARED, a folder both see. Whichever
process asks first makes the run under a file lock while the other waits; the main process asks at collection
(tests/conftest.py), so the run overlaps its first tests. Without PGPS_TEST_SHARED: once per pytest session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from repo_copy import ROOT, copy_repository, once, private_copy

BIN = Path(sys.executable).parent
SHARED_ENV = "PGPS_TEST_SHARED"
(SMOKE_TASK,) = yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text())["tasks"]  # the profile's one task
#: the run the Docker and SLURM stages remove and re-run (the PGPS training of the smoke profile's one fold)
RERUN = ("pgps", 0)

#: what a user's shell may export that changes nnU-Net, torch or the trainers if it reached a run: thread counts and
#: CPU kernels other than params.yaml's, a shorter budget, torch.compile. The committed metrics were made without
#: them (and with another stage count at once): the same bits must come back.
HOSTILE_ENV = {
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
    "OPENBLAS_NUM_THREADS": "2",
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "PGPS_NUM_EPOCHS": "1",
    "PGPS_ITERS_PER_EPOCH": "1",
    "PGPS_SEED": "7",
    "nnUNet_compile": "t",
    "nnUNet_n_proc_DA": "3",
}


def pipeline_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the venv first on PATH and no data folders of the caller's, plus ``extra``."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    for key in ("PGPS_DATA", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env | (extra or {})


def reproduce(ws: Path, profile: str) -> dict:
    """`pgps reproduce` of ``profile`` in a fresh copy of the repository at ``ws``, from a shell that exports
    HOSTILE_ENV; its output, wall time and params."""
    ws.mkdir(parents=True)
    copy_repository(ws)
    shutil.copyfile(ws / "profiles" / f"{profile}.yaml", ws / "params.yaml")  # byte-identical: a profile
    start = time.monotonic()
    cmd = [str(BIN / "pgps"), "reproduce"]
    proc = subprocess.run(cmd, cwd=ws, env=pipeline_env(HOSTILE_ENV), capture_output=True, text=True, timeout=5400)
    assert proc.returncode == 0, (
        f"pgps reproduce failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    elapsed = time.monotonic() - start
    params = yaml.safe_load((ws / "params.yaml").read_text())
    return {"ws": ws, "stdout": proc.stdout, "elapsed": elapsed, "params": params}


def _base(tmp_path_factory: pytest.TempPathFactory | None) -> Path:
    shared = os.environ.get(SHARED_ENV)
    if shared:
        return Path(shared)
    assert tmp_path_factory is not None, f"{SHARED_ENV} is not set"
    return tmp_path_factory.getbasetemp()


def _make(root: Path) -> None:
    result = reproduce(root / "repo", "smoke")
    meta = {"stdout": result["stdout"], "elapsed": result["elapsed"]}
    (root / "reproduce.json").write_text(json.dumps(meta))


def finished_smoke_run(tmp_path_factory: pytest.TempPathFactory | None = None) -> dict:
    """The finished smoke run (read-only: copy its ``ws`` with :func:`copy_run`): ``ws``, `pgps reproduce`'s
    ``stdout`` and ``elapsed`` seconds, ``params``."""
    root = once(_base(tmp_path_factory), "smoke-run", _make)
    ws = root / "repo"
    meta = json.loads((root / "reproduce.json").read_text())
    return {"ws": ws, "params": yaml.safe_load((ws / "params.yaml").read_text()), **meta}


def start_in_background() -> threading.Thread | None:
    """Start making the shared run in a thread of this process (when PGPS_TEST_SHARED is set); a failure there is
    left for the first test that asks for the run, which makes it again and fails with the error."""
    if not os.environ.get(SHARED_ENV):
        return None

    def make() -> None:
        try:
            finished_smoke_run()
        except BaseException as exc:  # noqa: BLE001  (reported by the test that asks next)
            print(f"\n[smoke run in the background failed: {type(exc).__name__}: {str(exc)[:500]}]", flush=True)

    thread = threading.Thread(target=make, name="smoke-run", daemon=False)
    thread.start()
    return thread


def copy_run(ws: Path, dest: Path, with_code: bool = True) -> Path:
    """A private copy of a finished workspace (:func:`repo_copy.private_copy`); ``with_code=False`` drops the code,
    so the Docker image's entry point links its own (src -> /opt/pgps/src, the same files)."""
    private_copy(ws, dest)
    if not with_code:
        shutil.rmtree(dest / "src")
    return dest


def remove_training(ws: Path, run: str = RERUN[0], fold: int = RERUN[1]) -> str:
    """Delete one training's output from a finished run, so DVC sees its train stage (and what follows from it:
    its evaluation, the report) as changed; returns the train stage's name."""
    shutil.rmtree(ws / "data" / "nnUNet_results" / SMOKE_TASK / run / f"fold_{fold}")
    return f"train@{SMOKE_TASK}-{run}-{fold}"
