"""Per task and run: Dice over folds (and per class), the paired per-case tests with one Holm correction over
the whole report, and, apart from them, the training clock, energy and CO2 with their ratios to the baseline.

Pure numbers in, numbers out (no files): the tables, the claims, the plots and the two JSON files share them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from pgps.report import stats
from pgps.report.records import BREAKDOWN_KEYS, CLOCK_DEFINITION

#: the paper's method; its claims are checked for every run of this class
PGPS_CLASS = "nnUNetTrainerPGPS"
#: constant-patch trainers (a run of one with fewer iterations is a reduced-budget baseline)
CONSTANT_CLASSES = ("nnUNetTrainer", "nnUNetTrainerConstant")
#: "the same compute": a reduced-budget baseline within this factor of PGPS's compute fraction
SAME_COMPUTE_FACTOR = 1.5


@dataclass(frozen=True)
class FoldRun:
    """One evaluated (task, run, fold): the evaluate stage's metrics.json and timings.json."""

    fold: int
    metrics: dict[str, Any]
    timings: dict[str, Any]

    def curve(self) -> list[dict[str, Any]]:
        """Per-epoch points, the deterministic curve joined with each epoch's span on the training clock."""
        spans = {e["epoch"]: e for e in self.timings.get("epochs", [])}
        return [
            {
                **p,
                "elapsed_s": spans.get(p["epoch"], {}).get("elapsed_s"),
                "wall_time_s": spans.get(p["epoch"], {}).get("wall_time_s"),
            }
            for p in self.metrics["curve"]
        ]


@dataclass
class Comparison:
    """``run`` vs ``reference`` on one task: per-case test, fold-mean delta, Holm-corrected verdict."""

    task: str
    run: str
    reference: str
    test: stats.PairedTest
    dice_delta: float | None  # difference of the fold means (shown; the verdict comes from the cases)
    delta_folds: dict[int, float]
    p_holm: float | None = None
    significance: int = 0  # +1 significantly better, -1 significantly worse, 0 not significant / not tested


@dataclass
class Results:
    profile: str
    baseline: str
    alpha: float
    converged: bool
    convergence_note: str
    folds: list[int]
    tasks: list[str]
    names: list[str]
    rows: dict[str, dict[str, dict[str, Any]]]  # deterministic numbers per task and run
    timing: dict[str, dict[str, dict[str, Any]]]  # measured numbers per task and run
    comparisons: list[Comparison]
    reduced: dict[str, dict[str, Any]] = field(default_factory=dict)  # PGPS run -> matched reduced baseline
    clock_definition: str = CLOCK_DEFINITION  # as the trainer wrote it into the run records

    def comparison(self, task: str, run: str, reference: str) -> Comparison | None:
        for c in self.comparisons:
            if (c.task, c.run, c.reference) == (task, run, reference):
                return c
        return None

    def pgps_runs(self) -> list[str]:
        first = self.rows[self.tasks[0]]
        return [n for n in self.names if first[n]["trainer_class"] == PGPS_CLASS]

    @property
    def family(self) -> list[int]:
        """Paired cases of each test in the Holm family (every comparison that produced a p-value)."""
        return [c.test.n for c in self.comparisons if c.test.p_raw is not None]

    @property
    def family_size(self) -> int:
        return len(self.family)

    def can_reach(self, c: Comparison) -> bool:
        """Could this comparison's test be significant at all, given its size and the Holm family?"""
        return c.test.p_raw is not None and stats.can_reach(c.test.n, self.alpha, self.family)


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std; std is None (not 0) with fewer than two values: one fold gives no spread."""
    clean = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return None, None
    return statistics.fmean(clean), (statistics.stdev(clean) if len(clean) > 1 else None)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _compute(f: FoldRun) -> float | None:
    """Training voxels processed, in units of one full-patch iteration: epochs x iterations x voxel fraction."""
    vf = f.metrics.get("voxel_fraction")
    if vf is None:
        return None
    return f.metrics["epochs_run"] * f.metrics["budget"]["iters_per_epoch"] * float(vf)


def _whole(value: float | None) -> float | int | None:
    """An integer where the value is one (epochs: 4, not 4.0, unless the folds differ)."""
    return int(value) if value is not None and float(value).is_integer() else value


def _row(folds: list[FoldRun]) -> dict[str, Any]:
    dice_mean, dice_std = mean_std([f.metrics["dice"] for f in folds])
    classes = list(folds[0].metrics.get("dice_per_class") or {})
    per_class = {c: mean_std([f.metrics.get("dice_per_class", {}).get(c) for f in folds]) for c in classes}
    test = [f.metrics["test"]["dice"] for f in folds if "dice" in f.metrics.get("test", {})]
    row: dict[str, Any] = {
        "trainer_class": folds[0].metrics["trainer_class"],
        "folds": len(folds),
        "dice_folds": {f.fold: f.metrics["dice"] for f in folds},
        "dice_mean": dice_mean,
        "dice_std": dice_std,
        "dice_classes": {c: m for c, (m, _) in per_class.items()},
        "dice_classes_std": {c: s for c, (_, s) in per_class.items()},
        "voxel_fraction": mean_std([f.metrics.get("voxel_fraction") for f in folds])[0],
        "epochs": _whole(mean_std([f.metrics["epochs_run"] for f in folds])[0]),
        "compute": mean_std([_compute(f) for f in folds])[0],
        "iters_per_epoch": folds[0].metrics["budget"]["iters_per_epoch"],
        "cases": {c: d for f in folds for c, d in f.metrics["cases"].items()},
    }
    if test:
        row["test_dice_mean"], row["test_dice_std"] = mean_std(test)
    return row


def _sum(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(sum(present)) if values and len(present) == len(values) else None


def _timing(folds: list[FoldRun]) -> dict[str, Any]:
    clocks = [f.timings["clock"] for f in folds]
    energies = [f.timings.get("energy") or {"tracked": False} for f in folds]
    tracked = all(e.get("tracked") for e in energies)
    return {
        "train_time_s": float(sum(c["train_wall_s"] for c in clocks)),
        "train_time_folds": {f.fold: float(f.timings["clock"]["train_wall_s"]) for f in folds},
        "dead_s": float(sum(c["dead_s"] for c in clocks)),
        "lost_s": float(sum(c["lost_s"] for c in clocks)),
        "final_validation_s": _sum([c.get("final_validation_s") for c in clocks]),
        "breakdown_s": {k: float(sum(c["breakdown_s"][k] for c in clocks)) for k in BREAKDOWN_KEYS},
        "tracked": tracked,
        "energy_kwh": _sum([e.get("energy_kwh") for e in energies]) if tracked else None,
        "co2_kg": _sum([e.get("co2_kg") for e in energies]) if tracked else None,
        "co2_folds": {f.fold: e.get("co2_kg") for f, e in zip(folds, energies)} if tracked else {},
        "codecarbon_span_s": _sum([e.get("duration_s") for e in energies]) if tracked else None,
        "tracking_modes": sorted({str(e.get("tracking_mode")) for e in energies if e.get("tracked")}),
    }


def _fold_ratios(values: dict[int, Any], base: dict[int, Any]) -> dict[int, float]:
    """Per-fold ratios to the baseline's same fold (a paired measurement each)."""
    return {k: r for k, v in values.items() if (r := ratio(v, base.get(k))) is not None}


def _add_ratios(timing: dict[str, Any], base: dict[str, Any]) -> None:
    timing["time_ratio"] = ratio(timing["train_time_s"], base["train_time_s"])
    timing["time_ratio_folds"] = _fold_ratios(timing["train_time_folds"], base["train_time_folds"])
    timing["energy_ratio"] = ratio(timing["energy_kwh"], base["energy_kwh"])
    timing["co2_ratio"] = ratio(timing["co2_kg"], base["co2_kg"])
    timing["co2_ratio_folds"] = _fold_ratios(timing["co2_folds"], base["co2_folds"])


def _compare(task: str, run: str, ref: str, rows: dict[str, dict[str, Any]]) -> Comparison:
    a, b = rows[run], rows[ref]
    delta = None if a["dice_mean"] is None or b["dice_mean"] is None else a["dice_mean"] - b["dice_mean"]
    folds = {k: v - b["dice_folds"][k] for k, v in a["dice_folds"].items() if k in b["dice_folds"]}
    return Comparison(task, run, ref, stats.wilcoxon(a["cases"], b["cases"]), delta, folds)


def match_reduced_baseline(rows: dict[str, dict[str, dict[str, Any]]], pgps: str, baseline: str) -> dict[str, Any]:
    """The constant-patch run with reduced iterations whose compute is nearest PGPS's (within
    SAME_COMPUTE_FACTOR), found from the numbers (iterations x epochs x voxel fraction), not from its name."""

    def fraction(run: str) -> float | None:
        values = [ratio(rows[t][run]["compute"], rows[t][baseline]["compute"]) for t in rows]
        return mean_std(values)[0]

    first = next(iter(rows.values()))
    target = fraction(pgps)
    candidates = {
        n: f
        for n, r in first.items()
        if n != baseline and r["trainer_class"] in CONSTANT_CLASSES and (f := fraction(n)) is not None and f < 1
    }
    out: dict[str, Any] = {"run": None, "compute_fraction": None, "pgps_compute_fraction": target}
    if target is None:
        out["note"] = f"`{pgps}` has no recorded voxel fraction"
    elif not candidates:
        out["note"] = "the grid has no constant-patch run with a reduced budget (e.g. trainers.<run>.iters_fraction)"
    else:
        name = min(candidates, key=lambda n: abs(math.log(candidates[n] / target)))
        if max(candidates[name], target) / min(candidates[name], target) > SAME_COMPUTE_FACTOR:
            out["note"] = (
                f"no reduced-budget run within x{SAME_COMPUTE_FACTOR} of PGPS's compute ({target:.2f}); "
                f"nearest: `{name}` at {candidates[name]:.2f}"
            )
        else:
            out.update(run=name, compute_fraction=candidates[name], note="")
    return out


def aggregate(
    runs: dict[str, dict[str, list[FoldRun]]],
    baseline: str,
    alpha: float,
    *,
    profile: str = "",
    converged: bool = True,
    convergence_note: str = "",
) -> Results:
    """``runs[task][run]`` = the evaluated folds -> Results (every comparison Holm-corrected together)."""
    tasks = list(runs)
    names = list(next(iter(runs.values())))
    rows = {t: {n: _row(folds) for n, folds in by_run.items()} for t, by_run in runs.items()}
    timing = {t: {n: _timing(folds) for n, folds in by_run.items()} for t, by_run in runs.items()}
    for t in tasks:
        base_compute = rows[t][baseline]["compute"] if baseline in rows[t] else None
        for n in names:
            rows[t][n]["compute_fraction"] = ratio(rows[t][n]["compute"], base_compute)
            if baseline in timing[t]:
                _add_ratios(timing[t][n], timing[t][baseline])
    comparisons = [_compare(t, n, baseline, rows[t]) for t in tasks for n in names if n != baseline]
    folds = sorted({f.fold for by_run in runs.values() for fs in by_run.values() for f in fs})
    results = Results(profile, baseline, alpha, converged, convergence_note, folds, tasks, names, rows, timing, [])
    results.comparisons = comparisons
    definitions = [
        f.timings["clock"].get("definition") for by_run in runs.values() for fs in by_run.values() for f in fs
    ]
    results.clock_definition = next((d for d in definitions if d), CLOCK_DEFINITION)
    for pgps in results.pgps_runs():
        match = match_reduced_baseline(rows, pgps, baseline)
        results.reduced[pgps] = match
        if match["run"]:
            comparisons += [_compare(t, pgps, match["run"], rows[t]) for t in tasks]
    for c, p in zip(comparisons, stats.holm([c.test.p_raw for c in comparisons])):
        c.p_holm = p
        c.significance = stats.significance(c.test, p, alpha)
    return results
