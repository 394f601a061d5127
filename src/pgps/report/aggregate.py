"""Per task and run: Dice mean +- std over folds, time, energy, CO2, ratios vs the baseline, Wilcoxon tests.

Pure numbers in, numbers out (no files): the report, the plots and `pgps reproduce`'s table share them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Wilcoxon:
    """Paired test on per-case Dice of a run vs the baseline (the paper's test)."""

    n: int
    statistic: float | None
    p_value: float | None
    note: str


def _mean_std(values: list[float]) -> tuple[float, float]:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return float("nan"), float("nan")
    return statistics.fmean(clean), (statistics.stdev(clean) if len(clean) > 1 else 0.0)


def _sum(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(sum(values))


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def wilcoxon(run_cases: dict[str, float], base_cases: dict[str, float]) -> Wilcoxon:
    """Two-sided Wilcoxon signed-rank test over the cases both runs scored."""
    from scipy.stats import wilcoxon as scipy_wilcoxon

    common = sorted(set(run_cases) & set(base_cases))
    pairs = [
        (run_cases[c], base_cases[c]) for c in common if not (math.isnan(run_cases[c]) or math.isnan(base_cases[c]))
    ]
    n = len(pairs)
    if n == 0:
        return Wilcoxon(0, None, None, "no paired cases")
    diffs = [a - b for a, b in pairs]
    if all(d == 0 for d in diffs):
        return Wilcoxon(n, None, None, "identical per-case Dice")
    result = scipy_wilcoxon([a for a, _ in pairs], [b for _, b in pairs], zero_method="wilcox")
    note = f"n={n}" + (" (too few cases for p < 0.05)" if n < 6 else "")
    return Wilcoxon(n, float(result.statistic), float(result.pvalue), note)


def aggregate(runs: dict[str, dict[str, list[dict[str, Any]]]], baseline: str, alpha: float) -> dict[str, Any]:
    """``runs[task][run]`` = the evaluate stage's metrics.json dicts (one per fold) -> metrics tree."""
    out: dict[str, Any] = {}
    for task, by_run in runs.items():
        rows: dict[str, dict[str, Any]] = {}
        cases: dict[str, dict[str, float]] = {}
        for name, folds in by_run.items():
            dice_mean, dice_std = _mean_std([f["dice"] for f in folds])
            energies = [f["energy"] for f in folds]
            tracked = all(e.get("tracked") for e in energies)
            cases[name] = {c: d for f in folds for c, d in f["cases"].items()}
            test_dice = [f["test"]["dice"] for f in folds if "dice" in f.get("test", {})]
            row: dict[str, Any] = {
                "trainer_class": folds[0]["trainer_class"],
                "folds": len(folds),
                "dice_mean": dice_mean,
                "dice_std": dice_std,
                "train_time_s": float(sum(f["train_time_s"] for f in folds)),
                "energy_kwh": _sum([e.get("energy_kwh") for e in energies]) if tracked else None,
                "co2_kg": _sum([e.get("co2_kg") for e in energies]) if tracked else None,
                "voxel_fraction": folds[0].get("voxel_fraction"),
            }
            if test_dice:
                row["test_dice_mean"], row["test_dice_std"] = _mean_std(test_dice)
            rows[name] = row
        base = rows.get(baseline)
        for name, row in rows.items():
            if base is None:
                continue
            row["time_ratio"] = _ratio(row["train_time_s"], base["train_time_s"])
            row["energy_ratio"] = _ratio(row["energy_kwh"], base["energy_kwh"])
            row["co2_ratio"] = _ratio(row["co2_kg"], base["co2_kg"])
            row["dice_delta"] = row["dice_mean"] - base["dice_mean"]
            if name != baseline:
                test = wilcoxon(cases[name], cases[baseline])
                row["wilcoxon_n"] = test.n
                row["wilcoxon_p"] = test.p_value
                row["wilcoxon_stat"] = test.statistic
                row["significant"] = bool(test.p_value is not None and test.p_value < alpha)
                row["wilcoxon_note"] = test.note
        out[task] = rows
    return out
