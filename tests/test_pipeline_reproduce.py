"""`pgps reproduce`: profile switching without editing dvc.yaml, and its errors (one line, exit 2).

The full profile's grid is expanded by DVC itself (`pgps reproduce --profile full --list` = `dvc stage list` on a
fresh copy): every task x run x fold becomes a stage, with nothing run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from pgps.params import load_params
from repo_copy import copy_repository

BIN = Path(sys.executable).parent


def _pgps(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "pgps.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_outside_a_dvc_workspace_is_one_clear_error(tmp_path: Path) -> None:
    proc = _pgps("reproduce", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"pgps reproduce: error: {tmp_path}: no dvc.yaml and .dvc/ here; run `pgps reproduce` from the repository root"
    )


def test_unknown_or_invalid_profile_leaves_params_untouched(tmp_path: Path) -> None:
    ws = copy_repository(tmp_path)
    original = (ws / "params.yaml").read_text()
    proc = _pgps("reproduce", "--profile", "nope", cwd=ws)
    assert proc.returncode == 2 and "profiles/nope.yaml: no such profile (available: full)" in proc.stderr
    bad = yaml.safe_load((ws / "profiles" / "full.yaml").read_text())
    bad["budget"]["epochs"] = -1000
    (ws / "profiles" / "broken.yaml").write_text(yaml.safe_dump(bad))
    proc = _pgps("reproduce", "--profile", "broken", cwd=ws)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "pgps reproduce: error: profiles/broken.yaml: budget.epochs: must be >= 1, got -1000"
    assert (ws / "params.yaml").read_text() == original
    assert not list(ws.glob(".params.yaml.*"))  # no temp file left behind either


def test_full_profile_is_one_command_and_dvc_expands_the_paper_grid(tmp_path: Path) -> None:
    ws = copy_repository(tmp_path)
    dvc_yaml = (ws / "dvc.yaml").read_text()
    proc = _pgps("reproduce", "--profile", "full", "--list", cwd=ws)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ws / "params.yaml").read_text() == (ws / "profiles" / "full.yaml").read_text()
    assert (ws / "dvc.yaml").read_text() == dvc_yaml
    full = load_params(ws / "params.yaml")
    stages = re.findall(r"^(\S+@\S+|report)\s", proc.stdout, re.MULTILINE)
    trains = [s for s in stages if s.startswith("train@")]
    assert len(trains) == len(full.tasks) * len(full.trainers) * len(full.folds) == 450
    assert "train@Task10_Colon-constant_10pct-4" in trains
    assert len([s for s in stages if s.startswith("plan@")]) == 10 and "report" in stages
    assert not (ws / "data" / "raw").exists()
    # and back: the default profile is what git has
    subprocess.run(["git", "checkout", "params.yaml"], cwd=ws, check=True)
    assert load_params(ws / "params.yaml").profile == "default"
