"""Resource requests of the grid: the ``grid:`` section of params.yaml, then command-line flags.

Nothing about a cluster is hard-coded: partition, account, QoS, time limits, CPUs, memory and GPUs come
from here, and ``gpus: 0`` requests no GPU gres at all (a cluster without gres rejects any GPU request).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from pgps.errors import PGPSError


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


_RES_KEYS = ("cpus", "mem_gb", "gpus", "time_min")
_KEYS = (
    "partition",
    "account",
    "qos",
    "gres",
    "default",
    "stages",
    "signal_delay_s",
    "max_requeues",
    "array_parallelism",
)


def _positive(where: str, value: Any, *, allow_zero: bool = False, kind: type = int) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok or (kind is int and not float(value).is_integer()):
        lower = ">= 0" if allow_zero else "> 0"
        raise PGPSError(f"{where}: must be a number {lower}, got {value!r}")
    return kind(value)


def _resources(where: str, spec: Any, default: Resources) -> Resources:
    if spec is None:
        return default
    if not isinstance(spec, dict):
        raise PGPSError(f"{where}: must be a mapping with keys {', '.join(_RES_KEYS)}, got {spec!r}")
    unknown = sorted(set(spec) - set(_RES_KEYS))
    if unknown:
        raise PGPSError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(_RES_KEYS)})")
    values = {k: getattr(default, k) for k in _RES_KEYS}
    for key in ("cpus", "time_min"):
        if key in spec:
            values[key] = _positive(f"{where}.{key}", spec[key])
    if "mem_gb" in spec:
        values["mem_gb"] = _positive(f"{where}.mem_gb", spec["mem_gb"], kind=float)
    if "gpus" in spec:
        values["gpus"] = _positive(f"{where}.gpus", spec["gpus"], allow_zero=True)
    return Resources(**values)


def parse_grid_section(section: Any, where: str = "params.yaml: grid") -> GridConfig:
    """Validate the ``grid:`` mapping; each error names the file and the key."""
    if section is None:
        return GridConfig()
    if not isinstance(section, dict):
        raise PGPSError(f"{where}: must be a mapping, got {section!r}")
    unknown = sorted(set(section) - set(_KEYS))
    if unknown:
        raise PGPSError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(_KEYS)})")
    base = GridConfig()
    values: dict[str, Any] = {}
    for key in ("partition", "account", "qos", "gres"):
        value = section.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise PGPSError(f"{where}.{key}: must be a non-empty string or null, got {value!r}")
        values[key] = value
    values["default"] = _resources(f"{where}.default", section.get("default"), base.default)
    stages = section.get("stages")
    if stages is not None:
        if not isinstance(stages, dict):
            raise PGPSError(f"{where}.stages: must map dvc.yaml stage names to requests, got {stages!r}")
        values["stages"] = tuple(
            (str(name), _resources(f"{where}.stages.{name}", spec, values["default"])) for name, spec in stages.items()
        )
        values["stages_explicit"] = True
    for key in ("signal_delay_s", "array_parallelism"):
        if key in section:
            values[key] = _positive(f"{where}.{key}", section[key])
    if "max_requeues" in section:
        values["max_requeues"] = _positive(f"{where}.max_requeues", section["max_requeues"], allow_zero=True)
    return replace(base, **values)


def load_grid_config(params_file: Path) -> GridConfig:
    """The ``grid:`` section of ``params_file`` (defaults when the file has none)."""
    try:
        tree = yaml.safe_load(params_file.read_text()) or {}
    except FileNotFoundError:
        raise PGPSError(f"{params_file}: not found (run `pgps grid` in the repository root)") from None
    except yaml.YAMLError as exc:
        raise PGPSError(f"{params_file}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise PGPSError(f"{params_file}: must be a mapping at the top level")
    return parse_grid_section(tree.get("grid"), where=f"{params_file}: grid")


def add_resource_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that override params.yaml for one submission."""
    g = parser.add_argument_group("resources (override params.yaml's grid: section)")
    g.add_argument("--partition", help="SLURM partition for every job")
    g.add_argument("--account", help="SLURM account for every job")
    g.add_argument("--qos", help="SLURM quality of service for every job")
    g.add_argument("--gres", help="raw --gres for GPU jobs instead of --gpus-per-node (e.g. gpu:a100:1)")
    g.add_argument("--gpus", type=int, help="GPUs per job of the stages in grid.stages (0: CPU-only, no gres)")
    g.add_argument("--cpus", type=int, help="CPUs per job of the stages in grid.stages")
    g.add_argument("--mem-gb", type=float, help="memory (GB) per job of the stages in grid.stages")
    g.add_argument("--time-min", type=int, help="time limit (minutes) per job of the stages in grid.stages")
    g.add_argument("--signal-delay-s", type=int, help="seconds before the time limit to checkpoint and requeue")


def apply_flags(config: GridConfig, args: argparse.Namespace) -> GridConfig:
    """Flags win over params.yaml; each value checked like its params.yaml key."""
    values: dict[str, Any] = {}
    for key in ("partition", "account", "qos", "gres"):
        if getattr(args, key, None):
            values[key] = getattr(args, key)
    override = {}
    for flag, key in (("gpus", "gpus"), ("cpus", "cpus"), ("mem_gb", "mem_gb"), ("time_min", "time_min")):
        value = getattr(args, flag, None)
        if value is not None:
            override[key] = value
    if override:
        stages = []
        for name, res in config.stages:
            spec = {k: getattr(res, k) for k in _RES_KEYS} | override
            stages.append((name, _resources("command line", spec, res)))
        values["stages"] = tuple(stages)
    if getattr(args, "signal_delay_s", None) is not None:
        values["signal_delay_s"] = _positive("--signal-delay-s", args.signal_delay_s)
    return replace(config, **values)
