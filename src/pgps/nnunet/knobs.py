"""The training budget, read from environment variables because nnU-Net's CLI passes no
arguments to a trainer; one knob set replaces the official code's per-budget classes.

Every value that parses must also work (issue 15): magnitudes are bounded here, at parse time,
so that no value fails minutes later at epoch 0 (a seed torch cannot take, an infinite budget, a
fraction of the constant-patch run shorter than one epoch, a country codecarbon has no data for).
``resume_knobs``: ``--c`` without the variables takes them from the checkpoint (issue 12.3)."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

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
# upper bounds (the params schema's are the same numbers; pgps.schema)
MAX_SEED = 2**32 - 1  # numpy seeds mod 2**32; torch.manual_seed overflows past 2**64
MAX_EPOCHS = 100_000  # 100x the paper's 1000 epochs
MAX_ITERS = 1_000_000  # 4000x the paper's 250 iterations per epoch
MAX_BUDGET_S = 366 * 86400  # a time budget of more than a year is a typo
MIN_BUDGET_S = 1.0  # below a second no training step fits
MAX_BUDGET_X = 100.0  # a budget 100x the constant-patch run is no budget
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


def _int(env: Mapping[str, str], name: str, minimum: int, maximum: int, what: str) -> int:
    raw = env.get(name, DEFAULTS[name]).strip()
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if not minimum <= value <= maximum:
        raise PGPSError(f"{name}={raw!r}: {what} must be an integer >= {minimum} and <= {maximum}")
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
            f"PGPS_TIME_BUDGET={_short(raw)}: use off, a positive duration such as 2.5h, 90m or 600s, "
            "or a positive fraction of the constant-patch run such as 0.5x"
        )
    if m.group(2) == "x":
        if not value <= MAX_BUDGET_X:  # also inf
            raise PGPSError(f"PGPS_TIME_BUDGET={_short(raw)}: at most {MAX_BUDGET_X:g}x the constant-patch run")
        normal = f"{_plain(value)}x"
        if float(normal[:-1]) <= 0:
            raise PGPSError(f"PGPS_TIME_BUDGET={_short(raw)}: a fraction this small is no budget")
        return normal
    seconds = value * _UNIT_SECONDS[m.group(2)]
    if not MIN_BUDGET_S <= seconds <= MAX_BUDGET_S:  # also inf
        raise PGPSError(
            f"PGPS_TIME_BUDGET={_short(raw)}: a duration must be at least {MIN_BUDGET_S:g}s and at most "
            f"{MAX_BUDGET_S}s (a year)"
        )
    return f"{_plain(seconds)}s"


def _plain(value: float) -> str:
    """``%g`` (6 significant digits), without an exponent: the normalised value must parse again."""
    text = f"{value:g}"
    return text if "e" not in text else f"{value:.6f}".rstrip("0").rstrip(".")


def budget_fraction(time_budget: str) -> float | None:
    """The fraction of a normalised ``<fraction>x`` budget, else None."""
    return float(time_budget[:-1]) if time_budget.endswith("x") else None


CODECARBON_MISSING = "codecarbon is not installed: pip install 'pgps[pipeline]', or set PGPS_CODECARBON=off"


@functools.cache
def codecarbon_countries() -> frozenset[str]:
    """The ISO 3166-1 alpha-3 codes codecarbon has an energy mix for (its own offline data); for
    any other code its OfflineEmissionsTracker silently uses the world average."""
    try:
        from codecarbon.input import DataSource
    except ImportError:  # the core install: codecarbon comes with the pipeline extra
        raise PGPSError(f"PGPS_CODECARBON: {CODECARBON_MISSING}") from None
    return frozenset(DataSource().get_global_energy_mix_data())


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
    elif not re.fullmatch(r"[A-Za-z]{3}", carbon):
        raise PGPSError(f"PGPS_CODECARBON={carbon!r}: use 'off' or a 3-letter ISO country code such as DEU")
    elif carbon.upper() not in codecarbon_countries():
        raise PGPSError(
            f"PGPS_CODECARBON={carbon!r}: codecarbon has no energy mix for this country code (it would use the "
            "world average); use one it knows, such as DEU, or off"
        )
    else:
        carbon = carbon.upper()
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
    knobs = Knobs(
        num_epochs=_int(env, "PGPS_NUM_EPOCHS", 1, MAX_EPOCHS, "the number of epochs"),
        iters_per_epoch=_int(env, "PGPS_ITERS_PER_EPOCH", 1, MAX_ITERS, "training iterations per epoch"),
        val_iters=_int(env, "PGPS_VAL_ITERS", 1, MAX_ITERS, "validation iterations per epoch"),
        seed=_int(env, "PGPS_SEED", 0, MAX_SEED, "the seed"),
        codecarbon=carbon,
        dry_run=dry,
        save_every=_int(env, "PGPS_SAVE_EVERY", 1, MAX_EPOCHS, "the checkpoint interval in epochs"),
        time_budget=parse_time_budget(env.get("PGPS_TIME_BUDGET", DEFAULTS["PGPS_TIME_BUDGET"])),
        min_full_share=_share(env),
        augmentation=augmentation,
        cuda_graphs=graphs,
    )
    fraction = budget_fraction(knobs.time_budget)
    if fraction is not None and fraction * knobs.num_epochs < 1:
        raise PGPSError(
            f"PGPS_TIME_BUDGET={knobs.time_budget!r}: with PGPS_NUM_EPOCHS={knobs.num_epochs} that is less than one "
            "epoch of the constant-patch run; use a fraction of at least 1/PGPS_NUM_EPOCHS"
        )
    return knobs


def knob_name(field_name: str) -> str:
    """``num_epochs`` -> ``PGPS_NUM_EPOCHS``."""
    return f"PGPS_{field_name.upper()}"


def as_env(knobs: Knobs | Mapping[str, Any]) -> dict[str, str]:
    """The variables that give ``knobs`` (a Knobs or its ``to_dict()``) back through ``read_knobs``."""
    values = knobs.to_dict() if isinstance(knobs, Knobs) else knobs
    return {knob_name(k): str(v) for k, v in values.items()}


def resume_knobs(saved: Any, where: str, env: Mapping[str, str] | None = None) -> Knobs:
    """The knobs a resumed run (``--c``) trains with: the checkpoint's (``saved``: its
    ``pgps.knobs``), each variable set in ``env`` only if it means the same value; a conflicting
    one is refused, naming both (the run would not be the run it continues). A knob the
    checkpoint predates takes its default."""
    env = os.environ if env is None else env
    names = {f.name for f in fields(Knobs)}
    if not isinstance(saved, dict) or not set(saved) <= names:
        raise PGPSError(f"{where}: the checkpoint's PGPS knobs are not a mapping of known knobs ({_short(saved)})")
    try:
        recorded = read_knobs(as_env(saved))
    except PGPSError as exc:
        raise PGPSError(f"{where}: the checkpoint's PGPS knobs do not parse: {exc}") from None
    explicit = {k: v for k, v in env.items() if k in DEFAULTS}
    given = read_knobs(explicit)  # a bad explicit value: the usual one-line error naming it
    for f in fields(Knobs):
        name = knob_name(f.name)
        if name in explicit and getattr(given, f.name) != getattr(recorded, f.name):
            raise PGPSError(
                f"{where}: {name}={explicit[name].strip()!r} conflicts with the checkpoint's "
                f"{name}={getattr(recorded, f.name)!r}; unset it to resume with the checkpoint's value, "
                "or start a new run"
            )
    return recorded


def _short(value: Any) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."
