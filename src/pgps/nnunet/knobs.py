"""The training budget, read from environment variables because nnU-Net's CLI passes no
arguments to a trainer; one knob set replaces the official code's per-budget classes."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from pgps.errors import PGPSError

DEFAULTS: dict[str, str] = {
    "PGPS_NUM_EPOCHS": "1000",
    "PGPS_ITERS_PER_EPOCH": "250",
    "PGPS_VAL_ITERS": "50",
    "PGPS_SEED": "0",
    "PGPS_CODECARBON": "off",
    "PGPS_DRY_RUN": "auto",
    "PGPS_SAVE_EVERY": "1",
    "PGPS_TIME_BUDGET": "off",
    "PGPS_MIN_FULL_SHARE": "0.25",
    "PGPS_AUGMENTATION": "stage",
    "PGPS_CUDA_GRAPHS": "off",
}
_BUDGET = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([hmsx])")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


@dataclass(frozen=True)
class Knobs:
    num_epochs: int
    iters_per_epoch: int
    val_iters: int
    seed: int
    codecarbon: str  # "off" or an ISO 3166 alpha-3 country code
    dry_run: str  # on | off | auto
    save_every: int  # checkpoint_latest every N epochs (1: a crash loses at most one epoch)
    time_budget: str = "off"  # off | "<seconds>s" | "<fraction>x" (normalised; see parse_time_budget)
    min_full_share: float = 0.25  # budgeted runs: least share of the epochs at the full patch
    augmentation: str = "stage"  # stage: nnU-Net derives it from each stage's patch | planned: the plan's regime
    cuda_graphs: str = "off"  # on: capture one CUDA graph per stage shape (CUDA only; CPU falls back to eager)

    def to_dict(self) -> dict:
        return asdict(self)


def _int(env: Mapping[str, str], name: str, minimum: int, what: str) -> int:
    raw = env.get(name, DEFAULTS[name]).strip()
    try:
        value = int(raw)
    except ValueError:
        raise PGPSError(f"{name}={raw!r}: {what} must be an integer >= {minimum}") from None
    if value < minimum:
        raise PGPSError(f"{name}={raw!r}: {what} must be an integer >= {minimum}")
    return value


def parse_time_budget(raw: str) -> str:
    """``2.5h`` / ``90m`` / ``600s`` -> ``"9000s"`` etc.; ``0.5x`` (of the predicted constant-patch
    run) stays a fraction; ``off`` or empty disables the budget."""
    text = raw.strip().lower()
    if text in ("", "off"):
        return "off"
    m = _BUDGET.fullmatch(text)
    value = float(m.group(1)) if m else 0.0
    if m is None or value <= 0:
        raise PGPSError(
            f"PGPS_TIME_BUDGET={raw!r}: use off, a positive duration such as 2.5h, 90m or 600s, "
            "or a positive fraction of the constant-patch run such as 0.5x"
        )
    if m.group(2) == "x":
        return f"{value:g}x"
    return f"{value * _UNIT_SECONDS[m.group(2)]:g}s"


def _share(env: Mapping[str, str]) -> float:
    raw = env.get("PGPS_MIN_FULL_SHARE", DEFAULTS["PGPS_MIN_FULL_SHARE"]).strip()
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:  # also rejects nan
        raise PGPSError(f"PGPS_MIN_FULL_SHARE={raw!r}: the full-patch share of the epochs must be a number in [0, 1]")
    return value


def read_knobs(env: Mapping[str, str] | None = None) -> Knobs:
    """Parse and check every knob; the first invalid one raises a PGPSError naming it."""
    env = os.environ if env is None else env
    carbon = env.get("PGPS_CODECARBON", DEFAULTS["PGPS_CODECARBON"]).strip()
    if carbon.lower() == "off" or carbon == "":
        carbon = "off"
    elif re.fullmatch(r"[A-Za-z]{3}", carbon):
        carbon = carbon.upper()
    else:
        raise PGPSError(f"PGPS_CODECARBON={carbon!r}: use 'off' or a 3-letter ISO country code such as DEU")
    dry = env.get("PGPS_DRY_RUN", DEFAULTS["PGPS_DRY_RUN"]).strip().lower()
    if dry not in ("on", "off", "auto"):
        raise PGPSError(f"PGPS_DRY_RUN={dry!r}: use on, off or auto (auto = on for CUDA devices)")
    augmentation = env.get("PGPS_AUGMENTATION", DEFAULTS["PGPS_AUGMENTATION"]).strip().lower()
    if augmentation not in ("stage", "planned"):
        raise PGPSError(
            f"PGPS_AUGMENTATION={augmentation!r}: use stage (nnU-Net's augmentation for each stage's patch, as the "
            "official code) or planned (the planned patch's augmentation at every stage; only the crop changes)"
        )
    graphs = env.get("PGPS_CUDA_GRAPHS", DEFAULTS["PGPS_CUDA_GRAPHS"]).strip().lower()
    if graphs not in ("on", "off"):
        raise PGPSError(f"PGPS_CUDA_GRAPHS={graphs!r}: use on or off")
    return Knobs(
        num_epochs=_int(env, "PGPS_NUM_EPOCHS", 1, "the number of epochs"),
        iters_per_epoch=_int(env, "PGPS_ITERS_PER_EPOCH", 1, "training iterations per epoch"),
        val_iters=_int(env, "PGPS_VAL_ITERS", 1, "validation iterations per epoch"),
        seed=_int(env, "PGPS_SEED", 0, "the seed"),
        codecarbon=carbon,
        dry_run=dry,
        save_every=_int(env, "PGPS_SAVE_EVERY", 1, "the checkpoint interval in epochs"),
        time_budget=parse_time_budget(env.get("PGPS_TIME_BUDGET", DEFAULTS["PGPS_TIME_BUDGET"])),
        min_full_share=_share(env),
        augmentation=augmentation,
        cuda_graphs=graphs,
    )
