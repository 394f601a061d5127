"""What produced the numbers: package versions, git commit, CPU/GPU, codecarbon's tracking mode.

Read without importing torch (the report stays fast): versions from package metadata, hardware from
/proc/cpuinfo and nvidia-smi, the tracking mode from the runs' emissions files.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pgps.report.aggregate import FoldRun

PACKAGES = ("pgps", "torch", "torchvision", "nnunetv2", "dvc", "codecarbon", "numpy", "scipy", "matplotlib")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _run(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def git_commit(cwd: Path = Path(".")) -> str:
    """HEAD, marked ``+dirty`` when tracked files differ from it (untracked files do not count)."""
    if not shutil.which("git"):
        return "unknown (git not installed)"
    head = _run(["git", "-C", str(cwd), "rev-parse", "HEAD"])
    if not head:
        return "unknown (not a git checkout)"
    dirty = _run(["git", "-C", str(cwd), "status", "--porcelain", "--untracked-files=no"])
    return head + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_models() -> str:
    if not shutil.which("nvidia-smi"):
        return "none (no nvidia-smi)"
    names = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    return ", ".join(sorted(set(names.splitlines()))) or "none"


def cpu_energy_source() -> str:
    """codecarbon measures CPU energy only through readable RAPL counters; otherwise it estimates it."""
    for counter in Path("/sys/class/powercap").glob("intel-rapl:*/energy_uj"):
        if os.access(counter, os.R_OK):
            return "measured (RAPL counters readable)"
    return "estimated from CPU TDP and load (no readable RAPL counters); RAM from a per-GB constant"


def environment(folds: list[FoldRun]) -> dict[str, Any]:
    energies = [f.timings.get("energy") or {} for f in folds]
    modes = sorted({e.get("tracking_mode", "") for e in energies if e.get("tracked")} - {""})
    cc_cpus = sorted({e.get("cpu_model", "") for e in energies if e.get("tracked")} - {""})
    return {
        "packages": {name: _version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical cores)",
        "gpu": gpu_models(),
        "devices_used": sorted({f.metrics["device"] for f in folds}),
        "codecarbon_tracking_mode": ", ".join(modes) or "not tracked",
        "codecarbon_cpu_energy": cpu_energy_source(),
        "codecarbon_gpu_energy": "measured (NVML)" if any(e.get("gpu_model") for e in energies) else "no GPU",
        "codecarbon_cpu_model": ", ".join(cc_cpus) or "n/a",
    }
