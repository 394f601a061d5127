"""`pgps reproduce [--profile NAME]`: the whole pipeline (`dvc repro`) in the current workspace, then the table.

A profile is a complete params file under ``profiles/``. Applying it copies it over ``params.yaml`` (after
the same validation), because DVC reads its parameters from params.yaml, records their values in dvc.lock,
and re-runs exactly the stages whose parameters changed; this needs neither an edit of dvc.yaml nor git
(``dvc exp run --set-param`` would need a git commit in the workspace, which a Docker bind mount may lack).
``git checkout params.yaml`` returns to the default profile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pgps import fileio
from pgps.errors import PGPSError
from pgps.params import PARAMS_FILE, load_params

PROFILES_DIR = Path("profiles")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", default=None, help="apply profiles/NAME.yaml (e.g. full: the paper's grid) to params.yaml first"
    )
    parser.add_argument("--force", action="store_true", help="re-run every stage (dvc repro --force)")
    parser.add_argument(
        "--list", action="store_true", help="apply the profile and list the grid's stages (dvc stage list); run nothing"
    )


def apply_profile(name: str, params_file: Path = PARAMS_FILE) -> bool:
    """Validate ``profiles/<name>.yaml`` and copy it over params.yaml; True if params.yaml changed."""
    profile = Path(name) if name.endswith((".yaml", ".yml")) else PROFILES_DIR / f"{name}.yaml"
    if not profile.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))) or "none"
        raise PGPSError(f"{profile}: no such profile (available: {known})")
    load_params(profile)  # same rules as params.yaml: a bad profile never reaches it
    text = profile.read_text()
    if params_file.is_file() and params_file.read_text() == text:
        return False
    fileio.write_text(params_file, text)
    return True


def dvc_executable() -> str:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else "dvc"


def summary(results: Path = Path("results/metrics.json"), params_file: Path = PARAMS_FILE) -> str:
    from pgps.report.markdown import summary_table

    try:
        metrics = json.loads(results.read_text())
    except FileNotFoundError:
        raise PGPSError(f"{results}: not found after dvc repro (did the report stage run?)") from None
    except json.JSONDecodeError as exc:
        raise PGPSError(f"{results}: not valid JSON ({exc.msg})") from None
    return summary_table(metrics, metrics.get("baseline") or load_params(params_file).baseline)


def main(args: argparse.Namespace) -> int:
    if not Path("dvc.yaml").is_file() or not Path(".dvc").is_dir():
        raise PGPSError(f"{Path.cwd()}: no dvc.yaml and .dvc/ here; run `pgps reproduce` from the repository root")
    if args.profile:
        changed = apply_profile(args.profile)
        print(
            f"profile {args.profile}: params.yaml "
            + ("updated (git checkout params.yaml to go back)" if changed else "already matches"),
            flush=True,
        )
    load_params(PARAMS_FILE)  # one clear error before DVC starts anything
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if args.list:
        cmd = [dvc_executable(), "stage", "list"]
    else:
        cmd = [dvc_executable(), "repro"] + (["--force"] if args.force else [])
    start = time.monotonic()
    print("+ " + " ".join(["dvc", *cmd[1:]]), flush=True)
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise PGPSError(f"dvc {cmd[1]} failed (exit {proc.returncode}); the failing stage's message is above")
    elapsed = time.monotonic() - start
    if not args.list:
        print()
        print(summary())
        print(f"\npipeline wall time: {elapsed:.0f} s; report: results/report.md, plots: results/plots/")
    return 0
