"""Tables built from the two JSON files' layouts (pgps.report.jsonfiles), so the report, the terminal and the
README show the same numbers: the README's table is ``readme_table(results/metrics.json)``.

The paper-style table: tasks x methods, Dice mean ± std over folds, the best per task in bold, ↑ / ↓ where a
method is significantly better / worse than the baseline (per-case Wilcoxon, Holm-corrected over the report),
then the mean over tasks, on how many tasks a method beats the baseline, and (from timings.json) its relative
training time and CO2.
"""

from __future__ import annotations

import statistics
from typing import Any

from pgps.errors import PGPSError
from pgps.report import document, fmt

UP, DOWN = "↑", "↓"
LEGEND = (
    f"Dice mean ± std over folds (n/a: one fold, no spread); **bold**: best on the task; {UP} / {DOWN}: "
    "significantly better / worse than the baseline (two-sided Wilcoxon signed-rank test on per-case Dice, "
    "Holm-corrected over every comparison in this report)."
)


def baseline_of(metrics: dict[str, Any], source: str = "metrics.json") -> str:
    """The baseline is the one run compared with nothing (no ``dice_delta``), the same on every task."""
    found = set()
    for task, runs in metrics.items():
        if not isinstance(runs, dict):
            raise PGPSError(f"{source}: {task}: must map run names to numbers")
        bases = [n for n, e in runs.items() if "dice_delta" not in e]
        if len(bases) != 1:
            raise PGPSError(
                f"{source}: {task}: expected exactly one run without dice_delta (the baseline), got {bases}"
            )
        found.add(bases[0])
    if len(found) != 1:
        raise PGPSError(f"{source}: the tasks disagree on the baseline ({', '.join(sorted(found))})")
    return found.pop()


def _runs(metrics: dict[str, Any], baseline: str) -> list[str]:
    names = list(next(iter(metrics.values())))
    return [baseline] + [n for n in names if n != baseline]


def _mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else statistics.fmean(values)  # type: ignore[arg-type]


def dice_table(
    metrics: dict[str, Any], timings: dict[str, Any] | None = None, source: str = "metrics.json"
) -> document.Table:
    baseline = baseline_of(metrics, source)
    names = _runs(metrics, baseline)
    header = ["task"] + [f"`{n}`" + (" (baseline)" if n == baseline else "") for n in names]
    rows = []
    for task, runs in metrics.items():
        means = [runs[n]["dice_mean"] for n in names if runs[n]["dice_mean"] is not None]
        best = max(means, default=None)
        cells = [task]
        for n in names:
            e = runs[n]
            text = fmt.mean_pm(e["dice_mean"], e["dice_std"])
            if best is not None and e["dice_mean"] == best:
                text = f"**{text}**"
            sig = e.get("significance", 0)
            cells.append(text + (f" {UP}" if sig > 0 else f" {DOWN}" if sig < 0 else ""))
        rows.append(cells)
    tasks = list(metrics)
    m = len(tasks)
    rows.append(
        ["mean over tasks"] + [fmt.num(_mean([metrics[t][n]["dice_mean"] for t in tasks]), ".4f") for n in names]
    )
    better = ["—"] + [
        f"{sum(1 for t in tasks if (metrics[t][n].get('dice_delta') or 0) > 0)} of {m}" for n in names[1:]
    ]
    rows.append([f"higher Dice than `{baseline}` (tasks)"] + better)
    significant = ["—"] + [
        f"{sum(1 for t in tasks if metrics[t][n].get('significance', 0) > 0)} {UP} / "
        f"{sum(1 for t in tasks if metrics[t][n].get('significance', 0) < 0)} {DOWN}"
        for n in names[1:]
    ]
    rows.append(["significantly better / worse (tasks)"] + significant)
    if timings is not None:
        per_task = timings["tasks"]
        for key, label in (("time_ratio", "training time"), ("co2_ratio", "CO2")):
            values = [_mean([per_task[t][n].get(key) for t in tasks]) for n in names]
            rows.append([f"{label} vs `{baseline}` (mean ratio over tasks)"] + [fmt.num(v, ".2f") for v in values])
    return document.Table(header, rows)


def readme_table(metrics: dict[str, Any], source: str = "metrics.json") -> str:
    """The README's result table, rendered from results/metrics.json alone (committed, deterministic)."""
    return document.markdown([dice_table(metrics, None, source)])


def summary_table(metrics: dict[str, Any], baseline: str, timings: dict[str, Any] | None = None) -> str:
    """Plain-text table for the terminal (`pgps report`, `pgps reproduce`); times need timings.json."""
    header = ("task", "run", "Dice mean±std", "ΔDice", "p (Holm)", "train time s", "time ratio", "CO2 ratio")
    lines = [header]
    per_task = (timings or {}).get("tasks", {})
    for task, runs in metrics.items():
        for name, e in runs.items():
            t = per_task.get(task, {}).get(name, {})
            lines.append(
                (
                    task,
                    name + (" (baseline)" if name == baseline else ""),
                    f"{fmt.num(e['dice_mean'], '.4f')}±{fmt.num(e['dice_std'], '.4f')}",
                    fmt.signed(e.get("dice_delta")),
                    fmt.p_value(e.get("p_holm")),
                    fmt.num(t.get("train_time_s"), ".1f"),
                    fmt.num(t.get("time_ratio"), ".2f"),
                    fmt.num(t.get("co2_ratio"), ".2f"),
                )
            )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
