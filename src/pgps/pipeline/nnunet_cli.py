"""Run nnU-Net's own console scripts (``nnUNetv2_*``) in a subprocess with the pipeline's environment.

A subprocess (not an in-process call) because nnU-Net reads ``nnUNet_raw``/``_preprocessed``/``_results``
once, at import time: each stage points them at its own (temporary) folders.

The environment is hermetic: what a user exported in the shell (``PGPS_TIME_BUDGET``, ``nnUNet_compile``,
``OMP_NUM_THREADS``, ...) never reaches a pipeline run, because DVC caches the run under its params and
code alone. Every variable that changes a result is removed and then set from params.yaml
(:mod:`pgps.pipeline.run_settings`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from pgps.errors import PGPSError
from pgps.params import Params, TrainerSpec
from pgps.paths import TRAINERS_DIR
from pgps.pipeline.run_settings import run_settings

#: inherited variables no pipeline process sees. nnunetv2 2.8.1 reads nnUNet_raw/_preprocessed/_results/
#: _extTrainer/_compile/_n_proc_DA/_def_n_proc/_npp/_nps/_wandb_* (tests/test_hermetic_runs.py greps its
#: sources for more); the trainers read PGPS_*; the math libraries read their thread counts and CPU kernel
#: choice; NVIDIA/torch switches change float results on GPUs.
STRIPPED_PREFIXES: tuple[str, ...] = (
    "PGPS_",
    "NNUNET_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "GOTO_",
    "BLIS_",
    "VECLIB_",
    "NUMEXPR_",
)
STRIPPED_PREFIXES += ("ONEDNN_", "DNNL_", "TORCHINDUCTOR_")
STRIPPED_NAMES = frozenset(
    {"ATEN_CPU_CAPABILITY", "NVIDIA_TF32_OVERRIDE", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "CUBLAS_WORKSPACE_CONFIG"}
)


def script(name: str) -> str:
    """The console script next to this interpreter (the pinned venv), else the one on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise PGPSError(f"{name}: not found next to {sys.executable} or on PATH (is nnunetv2 installed?)")
    return found


#: console scripts the pipeline starts as ``python -c`` of their entry function (nnunetv2's entry_points.txt). Why:
#: nnU-Net's validation, export and metrics pools use the spawn start method, and a spawned worker first re-imports
#: the module that started the process; for the console script that is nnunetv2.run.run_training (torch._dynamo,
#: pandas, seaborn, ...: ~12 CPU-s), with ``-c`` only the module of the function it runs (~5 CPU-s). Measured: one
#: ``--val`` of a smoke run 42 s through the script, 30 s this way, the same Dice. Same function, same arguments.
ENTRY_POINTS: dict[str, tuple[str, str]] = {
    "nnUNetv2_train": ("nnunetv2.run.run_training", "run_training_entry"),
    "nnUNetv2_predict": ("nnunetv2.inference.predict_from_raw_data", "predict_entry_point"),
}


def _entry_code(name: str) -> str:
    module, function = ENTRY_POINTS[name]
    return f"import sys; from {module} import {function}; sys.exit({function}())"


def command(name: str) -> list[str]:
    """argv prefix that runs nnU-Net's console script ``name``: its entry function in this interpreter (see
    :data:`ENTRY_POINTS`), else the script itself (:func:`script`)."""
    return [sys.executable, "-c", _entry_code(name)] if name in ENTRY_POINTS else [script(name)]


def _console_script(cmd: list[str]) -> str | None:
    """The console script an entry-function command stands for (None: any other command)."""
    return next((name for name in ENTRY_POINTS if cmd[1:3] == ["-c", _entry_code(name)]), None)


def shown(cmd: list[str]) -> str:
    """``cmd`` as printed: an entry-function command shows as the console script it stands for."""
    name = _console_script(cmd)
    if name is None:
        return " ".join(cmd)
    return " ".join([name, *cmd[3:]]) + f"   (run as: {cmd[0]} -c '{cmd[2]}' ...)"


def stripped(name: str) -> bool:
    """True for an inherited variable that must not reach a pipeline process (case-insensitive prefixes)."""
    return name.upper().startswith(STRIPPED_PREFIXES) or name.upper() in STRIPPED_NAMES


def runtime_env(
    params: Params, run: TrainerSpec | None = None, inherited: Mapping[str, str] | None = None, **folders: Path
) -> dict[str, str]:
    """THE environment of every nnU-Net process of the pipeline.

    ``inherited`` (default: os.environ) minus every :func:`stripped` variable, plus nnU-Net's folders
    (``nnUNet_raw=...`` etc. as keywords; the others stay unset), our trainers as ``nnUNet_extTrainer``, and
    :func:`~pgps.pipeline.run_settings.run_settings` for ``run`` (None: a command outside any run, e.g.
    planning: runtime variables only, no PGPS_* knob).
    """
    source = os.environ if inherited is None else inherited
    env = {key: value for key, value in source.items() if not stripped(key)}
    env.update({key: str(Path(value).resolve()) for key, value in folders.items()})
    env["nnUNet_extTrainer"] = str(TRAINERS_DIR)
    env.update({key: value for key, value in run_settings(params, run).items() if value is not None})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(cmd: list[str], env: dict[str, str], what: str) -> None:
    """Run one nnU-Net command; its output streams through; a failure is one PGPSError line."""
    print("+ " + shown(cmd), flush=True)
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        name = _console_script(cmd)
        argv = [name, *cmd[3:]] if name else [Path(cmd[0]).name, *cmd[1:]]
        raise PGPSError(f"{what}: `{' '.join(argv)}` failed (exit {proc.returncode})")
