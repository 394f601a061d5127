"""Profiles: complete params files under ``profiles/``; applying one replaces ``params.yaml``.

DVC reads its parameters from params.yaml only, so a profile is applied by copying it there (after the same
validation). What must never happen is that this copy silently destroys a params.yaml the user edited: it is
replaced only when it is byte-identical to one of the profiles (the shipped ``default`` among them), i.e. when
nothing in it exists anywhere else. Otherwise the command stops and says how to keep or drop the edits. This
needs no git, so it holds in a Docker workspace too.
"""

from __future__ import annotations

from pathlib import Path

from pgps import fileio
from pgps.errors import PGPSError
from pgps.params import PARAMS_FILE, load_params

PROFILES_DIR = Path("profiles")


def profile_path(name: str, profiles_dir: Path = PROFILES_DIR) -> Path:
    """``profiles/<name>.yaml``, or ``name`` itself when it is a path to a YAML file."""
    return Path(name) if name.endswith((".yaml", ".yml")) else profiles_dir / f"{name}.yaml"


def available(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in profiles_dir.glob("*.yaml"))


def checked_profile(name: str, profiles_dir: Path = PROFILES_DIR) -> Path:
    """The profile's file, validated with params.yaml's own rules (one error line naming it otherwise)."""
    path = profile_path(name, profiles_dir)
    if not path.is_file():
        raise PGPSError(f"{path}: no such profile (available: {', '.join(available(profiles_dir)) or 'none'})")
    load_params(path)
    return path


def matching_profile(params_file: Path = PARAMS_FILE, profiles_dir: Path = PROFILES_DIR) -> str | None:
    """The name of the profile params.yaml is a byte-identical copy of, None if it is none of them."""
    if not params_file.is_file():
        return None
    content = params_file.read_bytes()
    return next((p.stem for p in sorted(profiles_dir.glob("*.yaml")) if p.read_bytes() == content), None)


def apply_profile(name: str, params_file: Path = PARAMS_FILE, profiles_dir: Path = PROFILES_DIR) -> bool:
    """Copy the validated profile over params.yaml; True if params.yaml changed.

    Refuses (nothing written) when params.yaml has edits of its own, i.e. matches no profile."""
    path = checked_profile(name, profiles_dir)
    text = path.read_bytes()
    if params_file.is_file():
        if params_file.read_bytes() == text:
            return False
        if matching_profile(params_file, profiles_dir) is None:
            raise PGPSError(
                f"{params_file}: has edits that are in no {profiles_dir}/*.yaml, so --profile {name} would lose "
                f"them; keep them with `cp {params_file} {profiles_dir}/mine.yaml` (a site's grid: settings "
                f"belong in the profile you run), or drop them with `cp {profiles_dir}/default.yaml {params_file}`"
            )
    fileio.write_bytes(params_file, text)
    return True
