"""Resource requests of the grid: the ``grid:`` section of params.yaml, then command-line flags.

Nothing about a cluster is hard-coded: partition, account, QoS, constraint, time limits, CPUs, memory and
GPUs come from here, and ``gpus: 0`` requests no GPU gres at all (a cluster without gres rejects any GPU
request). The rules are :class:`pgps.schema.GridSection`'s, for the file and for the flags alike: every
value that reaches an ``#SBATCH`` line is a whole-string match (no newline, no control character, no quote).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pgps.errors import PGPSError
from pgps.schema import GridSection, ResourcesSpec, explain, validate
from pgps.yamlfile import load_yaml


@dataclass(frozen=True)
class Resources:
    """What one job asks the scheduler for."""

    cpus: int = 2
    mem_gb: float = 8.0
    gpus: int = 0
    time_min: int = 120


@dataclass(frozen=True)
class GridConfig:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gres: str | None = None  # e.g. "gpu:a100:1" where a site wants --gres instead of --gpus-per-node
    constraint: str | None = None  # SLURM --constraint (node features, e.g. "a100&ib")
    sbatch_extra: tuple[str, ...] = ()  # further sbatch options, each "--name" or "--name=value"
    default: Resources = Resources()
    # dvc.yaml stage name -> its own request (the GPU-heavy ones: training, prediction)
    stages: tuple[tuple[str, Resources], ...] = (
        ("train", Resources(cpus=8, mem_gb=32.0, gpus=1, time_min=1440)),
        ("evaluate", Resources(cpus=8, mem_gb=32.0, gpus=1, time_min=240)),
    )
    stages_explicit: bool = False  # params.yaml named the stages (then each must exist in dvc.yaml)
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: checkpoint + requeue
    max_requeues: int = 10  # time-outs a job may hit before it counts as failed
    array_parallelism: int = 64

    def resources(self, group: str) -> Resources:
        """The request for jobs generated from dvc.yaml stage ``group``."""
        return dict(self.stages).get(group, self.default)

    def sbatch_extra_parameters(self) -> dict[str, str | bool]:
        """``sbatch_extra`` as submitit's ``slurm_additional_parameters`` (``--exclusive`` -> True)."""
        pairs = (option.removeprefix("--").partition("=") for option in self.sbatch_extra)
        return {name: value if sep else True for name, sep, value in pairs}


RESOURCE_KEYS = ("cpus", "mem_gb", "gpus", "time_min")
SCALAR_KEYS = (
    "partition",
    "account",
    "qos",
    "gres",
    "constraint",
    "signal_delay_s",
    "max_requeues",
    "array_parallelism",
)


def _resources(spec: ResourcesSpec | None, default: Resources) -> Resources:
    if spec is None:
        return default
    return replace(default, **{k: v for k, v in spec.model_dump().items() if v is not None})


def _config(section: GridSection) -> GridConfig:
    base = GridConfig()
    values: dict[str, Any] = {k: getattr(section, k) for k in SCALAR_KEYS if getattr(section, k) is not None}
    values["sbatch_extra"] = tuple(section.sbatch_extra or ())
    values["default"] = _resources(section.default, base.default)
    if section.stages is not None:
        values["stages"] = tuple((name, _resources(spec, values["default"])) for name, spec in section.stages.items())
        values["stages_explicit"] = True
    return replace(base, **values)


def parse_grid_section(section: Any, file: str | Path = "params.yaml") -> GridConfig:
    """Validate the ``grid:`` mapping; an error is one line ``<file>: grid.<key>: <problem>``."""
    if section is None:
        return GridConfig()
    return _config(validate(GridSection, section, str(file), prefix="grid"))


def load_grid_config(params_file: Path) -> GridConfig:
    """The ``grid:`` section of ``params_file`` (defaults when the file has none)."""
    tree = load_yaml(params_file)
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise PGPSError(f"{params_file}: must be a mapping at the top level")
    return parse_grid_section(tree.get("grid"), params_file)


def _section(config: GridConfig) -> dict[str, Any]:
    """``config`` back as a ``grid:`` mapping (the inverse of _config)."""
    section: dict[str, Any] = {k: getattr(config, k) for k in SCALAR_KEYS}
    section["sbatch_extra"] = list(config.sbatch_extra)
    section["default"] = {k: getattr(config.default, k) for k in RESOURCE_KEYS}
    section["stages"] = {name: {k: getattr(res, k) for k in RESOURCE_KEYS} for name, res in config.stages}
    return section


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def validate_grid_overrides(config: GridConfig, overrides: Mapping[str, Any]) -> GridConfig:
    """``config`` with ``overrides`` applied, checked by the same rules as params.yaml's grid: section.

    Keys: any of SCALAR_KEYS, ``sbatch_extra`` (a list: added to the file's), and RESOURCE_KEYS (applied to
    every stage in ``config.stages``). A bad value is one PGPSError line naming its flag (``--partition: ...``).
    """
    unknown = sorted(set(overrides) - {*SCALAR_KEYS, *RESOURCE_KEYS, "sbatch_extra"})
    if unknown:
        raise PGPSError(f"{_flag(unknown[0])}: not a grid setting")
    section = _section(config)
    for key in SCALAR_KEYS:
        if key in overrides:
            section[key] = overrides[key]
    if "sbatch_extra" in overrides:
        section["sbatch_extra"] = [*section["sbatch_extra"], *overrides["sbatch_extra"]]
    resources = {k: overrides[k] for k in RESOURCE_KEYS if k in overrides}
    for spec in section["stages"].values():
        spec.update(resources)
    try:
        checked = GridSection.model_validate(section)
    except ValidationError as exc:
        loc, key, problem = explain(exc, GridSection)
        named = next((k for k in (*loc, key) if isinstance(k, str) and k in overrides), None)
        raise PGPSError(f"{_flag(named) if named else 'grid.' + key}: {problem}") from None
    return replace(_config(checked), stages_explicit=config.stages_explicit)


def add_resource_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that override params.yaml for one submission."""
    g = parser.add_argument_group("resources (override params.yaml's grid: section)")
    g.add_argument("--partition", help="SLURM partition for every job")
    g.add_argument("--account", help="SLURM account for every job")
    g.add_argument("--qos", help="SLURM quality of service for every job")
    g.add_argument("--gres", help="raw --gres for GPU jobs instead of --gpus-per-node (e.g. gpu:a100:1)")
    g.add_argument("--constraint", help="SLURM --constraint (node features) for every job, e.g. a100")
    g.add_argument("--gpus", type=int, help="GPUs per job of the stages in grid.stages (0: CPU-only, no gres)")
    g.add_argument("--cpus", type=int, help="CPUs per job of the stages in grid.stages")
    g.add_argument("--mem-gb", type=float, help="memory (GB) per job of the stages in grid.stages")
    g.add_argument("--time-min", type=int, help="time limit (minutes) per job of the stages in grid.stages")
    g.add_argument("--signal-delay-s", type=int, help="seconds before the time limit to checkpoint and requeue")
    g.add_argument("--array-parallelism", type=int, help="at most this many jobs of one array run at once")
    g.add_argument(
        "--sbatch-extra",
        action="append",
        metavar="OPTION",
        help="one more sbatch option for every job, e.g. --sbatch-extra=--mail-type=END (repeatable)",
    )


def apply_flags(config: GridConfig, args: argparse.Namespace) -> GridConfig:
    """Flags win over params.yaml; each value checked like its params.yaml key."""
    overrides: dict[str, Any] = {}
    for key in (*SCALAR_KEYS, *RESOURCE_KEYS, "sbatch_extra"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    return validate_grid_overrides(config, overrides) if overrides else config
