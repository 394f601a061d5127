"""What a finished training left behind, read into plain numbers: nnU-Net's validation summary (per-case and
per-class Dice), the run record (the curriculum per epoch and the one training clock), codecarbon's files.

Deterministic numbers (Dice, curriculum, losses) and measured ones (clock, energy) are returned apart: the
first must reproduce exactly in a seeded re-run, the second never does. Every layout problem is one
PGPSError naming the file and the key.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from pgps import fileio
from pgps.errors import PGPSError

RECORD_NAME = "pgps_record.json"
CONFIG_NAME = "pgps_config.json"
#: where the training time went, as the trainer records it (CONTRACTS.md, "The one training clock")
BREAKDOWN_KEYS = ("network_steps", "loader_wait", "validation", "epoch_end", "stage_switch", "other")
EPOCH_TIMING_KEYS = ("network_steps", "loader_wait", "validation", "epoch_end", "stage_switch")
CLOCK_DEFINITION = (
    "training wall time = first epoch's start to the last epoch's end, everything between included; time "
    "after a kill (dead_s), work lost after the last checkpoint (lost_s) and nnU-Net's final validation "
    "(final_validation_s) are reported on their own"
)
#: tolerance of the clock's internal sums (float seconds written by the trainer)
_SUM_TOLERANCE = 0.01


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PGPSError(f"{where}: must be a finite number, got {value!r}")
    return float(value)


def _optional_number(value: Any) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


# ------------------------------------------------------------------------------------------ nnU-Net summary
def _case_id(entry: dict) -> str:
    name = Path(entry.get("reference_file") or entry["prediction_file"]).name
    return name.split(".")[0]


def case_dice(summary: dict, path: Path) -> dict[str, float | None]:
    """Per case: mean Dice over the foreground labels (labels absent in both, NaN, skipped; None if all are)."""
    try:
        out: dict[str, float | None] = {}
        for entry in summary["metric_per_case"]:
            values = [m["Dice"] for label, m in entry["metrics"].items() if str(label) != "0"]
            clean = [float(v) for v in values if _optional_number(v) is not None]
            out[_case_id(entry)] = sum(clean) / len(clean) if clean else None
        return out
    except (KeyError, TypeError, AttributeError) as exc:
        raise PGPSError(f"{path}: unexpected nnU-Net summary layout (missing {exc})") from None


def foreground_dice(summary: dict, path: Path) -> float:
    try:
        return _number(summary["foreground_mean"]["Dice"], f"{path}: foreground_mean.Dice")
    except (KeyError, TypeError):
        raise PGPSError(f"{path}: no foreground_mean.Dice") from None


def label_names(dataset: dict, path: Path) -> dict[str, str]:
    """nnU-Net summary key -> label name: ``"1"`` for a label, ``"(1, 2, 3)"`` for a region (nnU-Net writes
    ``str(label_or_region)``); background left out."""
    labels = dataset.get("labels") if isinstance(dataset, dict) else None
    if not isinstance(labels, dict):
        raise PGPSError(f"{path}: no 'labels' mapping")
    out = {}
    for name, value in labels.items():
        if name == "background":
            continue
        if isinstance(value, list | tuple):
            key = str(tuple(int(v) for v in value)) if len(value) > 1 else str(int(value[0]))
        elif isinstance(value, int) and not isinstance(value, bool):
            key = str(value)
        else:
            raise PGPSError(f"{path}: labels.{name}: must be an integer label or a list (region), got {value!r}")
        out[key] = str(name)
    return out


def class_dice(summary: dict, names: dict[str, str], path: Path) -> dict[str, float | None]:
    """Label name -> Dice on the held-out fold (nnU-Net's mean over cases; None where no case has the label)."""
    try:
        means = summary["mean"]
        return {name: _optional_number(means[key]["Dice"]) for key, name in names.items() if key in means}
    except (KeyError, TypeError):
        raise PGPSError(f"{path}: unexpected nnU-Net summary layout (no mean.<label>.Dice)") from None


# ------------------------------------------------------------------------------------------ run record
def _mean_voxels(shapes: list[dict], fallback: list[int]) -> float:
    """Average voxels per training sample over an epoch, from the batches the network actually saw."""
    total = sum(item["count"] for item in shapes)
    if not total:
        return float(math.prod(fallback))
    return sum(math.prod(item["shape"][2:]) * item["count"] for item in shapes) / total


def curve(record: dict, path: Path) -> list[dict]:
    """Per-epoch curriculum and learning curve: only what a seeded re-run reproduces (no times)."""
    try:
        points = []
        for e in sorted(record["epochs"], key=lambda e: e["epoch"]):
            pseudo = e.get("mean_pseudo_dice")
            if pseudo is None and e.get("pseudo_dice"):
                values = [v for v in e["pseudo_dice"] if _optional_number(v) is not None]
                pseudo = sum(values) / len(values) if values else None
            points.append(
                {
                    "epoch": int(e["epoch"]),
                    "stage": int(e["stage"]),
                    "patch_size": list(e["patch_size"]),
                    "batch_size": int(e["batch_size"]),
                    "patch_voxels": _mean_voxels(e.get("train_input_shapes") or [], e["patch_size"]),
                    "train_loss": _optional_number(e["train_loss"]),
                    "val_loss": _optional_number(e["val_loss"]),
                    "pseudo_dice": _optional_number(pseudo),
                    "ema_pseudo_dice": _optional_number(e.get("ema_pseudo_dice")),
                }
            )
        return points
    except (KeyError, TypeError) as exc:
        raise PGPSError(f"{path}: unexpected run-record layout (missing {exc})") from None


def _clock_part(clock: dict, key: str, path: Path) -> Any:
    if key not in clock:
        raise PGPSError(f"{path}: clock.{key}: missing")
    return clock[key]


def clock(record: dict, path: Path) -> dict[str, Any]:
    """The run's training clock and, per epoch, its span on that clock (elapsed since training started,
    dead time excluded) and where its time went. A record without ``clock`` is from before the one clock:
    refused, since summing epoch times instead would measure something else."""
    raw = record.get("clock")
    if not isinstance(raw, dict):
        raise PGPSError(
            f"{path}: no 'clock' (a run record from before the one training clock); re-run `pgps train` for it"
        )
    wall = _number(_clock_part(raw, "train_wall_s", path), f"{path}: clock.train_wall_s")
    dead = _number(_clock_part(raw, "dead_s", path), f"{path}: clock.dead_s")
    lost = _number(_clock_part(raw, "lost_s", path), f"{path}: clock.lost_s")
    final = _clock_part(raw, "final_validation_s", path)
    final = None if final is None else _number(final, f"{path}: clock.final_validation_s")
    parts = _clock_part(raw, "breakdown_s", path)
    if not isinstance(parts, dict):
        raise PGPSError(f"{path}: clock.breakdown_s: must be a mapping")
    breakdown = {k: _number(_clock_part(parts, k, path), f"{path}: clock.breakdown_s.{k}") for k in BREAKDOWN_KEYS}
    sessions = _clock_part(raw, "sessions", path)
    if not isinstance(sessions, list) or not sessions:
        raise PGPSError(f"{path}: clock.sessions: must be a non-empty list")
    spans = []
    for i, s in enumerate(sessions):
        where = f"{path}: clock.sessions[{i}]"
        if not isinstance(s, dict):
            raise PGPSError(f"{where}: must be a mapping")
        try:
            spans.append((int(s["first_epoch"]), int(s["last_epoch"]), float(s["start"]), float(s["end"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise PGPSError(f"{where}: missing or invalid {exc}") from None
    spans.sort()
    if abs(sum(end - start for _, _, start, end in spans) - wall) > _SUM_TOLERANCE * max(1.0, wall):
        raise PGPSError(f"{path}: clock.train_wall_s {wall:.3f} is not the sum of its sessions' spans")
    if abs(sum(breakdown.values()) - wall) > _SUM_TOLERANCE * max(1.0, wall):
        raise PGPSError(f"{path}: clock.breakdown_s sums to {sum(breakdown.values()):.3f}, not train_wall_s {wall:.3f}")
    return {
        "definition": raw.get("definition") or CLOCK_DEFINITION,
        "train_wall_s": wall,
        "dead_s": dead,
        "lost_s": lost,
        "final_validation_s": final,
        "breakdown_s": breakdown,
        "sessions": [{"first_epoch": a, "last_epoch": b, "start": s, "end": e} for a, b, s, e in spans],
        "epochs": _epoch_spans(record, spans, path),
    }


def _epoch_spans(record: dict, spans: list[tuple[int, int, float, float]], path: Path) -> list[dict]:
    """Each epoch's span on the clock, as the trainer's clock counts it (pgps.nnunet.clock): its start to the
    next epoch's start within a session (the loop between two epochs goes to the earlier one), a session's last
    epoch to the session's end, so the epochs of a session tile it exactly. ``elapsed_s`` (at the epoch's end)
    runs on across sessions without the dead time between them."""
    epochs = sorted(record.get("epochs") or [], key=lambda e: e.get("epoch", -1))
    out, offset = [], 0.0
    for first, last, start, end in spans:
        inside = [e for e in epochs if first <= e.get("epoch", -1) <= last]
        starts = [_number(e.get("epoch_start"), f"{path}: epochs[{e['epoch']}].epoch_start") for e in inside]
        for e, begin, nxt in zip(inside, starts, starts[1:] + [end]):
            where = f"{path}: epochs[{e['epoch']}]"
            timing = e.get("timing_s")
            if not isinstance(timing, dict):
                raise PGPSError(f"{where}.timing_s: missing (record from before the one training clock)")
            out.append(
                {
                    "epoch": int(e["epoch"]),
                    "wall_time_s": nxt - begin,
                    "elapsed_s": offset + nxt - start,
                    "timing_s": {k: _number(timing.get(k), f"{where}.timing_s.{k}") for k in EPOCH_TIMING_KEYS},
                }
            )
        offset += end - start
    covered = {p["epoch"] for p in out}
    missing = [e.get("epoch") for e in epochs if e.get("epoch") not in covered]
    if missing:
        raise PGPSError(f"{path}: clock.sessions: epoch {missing[0]} lies in no session")
    return out


# ------------------------------------------------------------------------------------------ codecarbon
def _read_rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise PGPSError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not rows:
        raise PGPSError(f"{path}: codecarbon wrote no rows")
    return rows


def tracking_mode(fold: Path) -> tuple[str, str]:
    """codecarbon's tracking mode (``process``: this run's processes; ``machine``: the whole machine, other
    jobs' load included) and where it was read: the trainer's pgps_config.json, else emissions.csv."""
    config = fold / CONFIG_NAME
    if config.is_file():
        mode = (fileio.read_json(config).get("codecarbon") or {}).get("tracking_mode")
        if mode:
            return str(mode), CONFIG_NAME
    total = fold / "emissions.csv"
    if total.is_file():
        mode = _read_rows(total)[-1].get("tracking_mode", "")
        if mode:
            return mode, "emissions.csv"
    return "unknown", "not recorded"


def energy(fold: Path) -> dict[str, Any]:
    """kWh and kg CO2eq over the training spans, and how codecarbon obtained them.

    Summed over the per-stage task rows (``emissions_<experiment>_<run_id>.csv``, one file per tracker session,
    so a resumed run counts every session): in task mode codecarbon's ``emissions.csv`` total row covers only
    the last task. Falls back to ``emissions.csv`` rows when no task file exists."""
    total_csv = fold / "emissions.csv"
    task_csvs = sorted(p for p in fold.glob("emissions_*.csv") if p.name != "emissions.csv")
    sources = task_csvs or ([total_csv] if total_csv.is_file() else [])
    if not sources:
        return {"tracked": False}
    rows = [(path, row) for path in sources for row in _read_rows(path)]

    def total(column: str) -> float:
        value = 0.0
        for path, row in rows:
            try:
                value += float(row.get(column) or 0.0)
            except ValueError:
                raise PGPSError(f"{path}: column {column}: not a number: {row.get(column)!r}") from None
        return value

    last_path, last = rows[-1]
    mode, mode_source = tracking_mode(fold)
    if mode == "unknown" and last.get("tracking_mode"):  # codecarbon also writes it into the task rows
        mode, mode_source = last["tracking_mode"], last_path.name
    return {
        "tracked": True,
        "source": "per-stage tasks" if task_csvs else "emissions.csv",
        "duration_s": total("duration"),
        "energy_kwh": total("energy_consumed"),
        "co2_kg": total("emissions"),
        "cpu_energy_kwh": total("cpu_energy"),
        "gpu_energy_kwh": total("gpu_energy"),
        "ram_energy_kwh": total("ram_energy"),
        "sessions": len(sources),
        "tracking_mode": mode,
        "tracking_mode_source": mode_source,
        "country_iso_code": last.get("country_iso_code", ""),
        "cpu_model": last.get("cpu_model", ""),
        "gpu_model": last.get("gpu_model", ""),
        "codecarbon_version": last.get("codecarbon_version", ""),
    }
