"""PNG plots (matplotlib, headless) and the CSV tables DVC renders as interactive plots.

Learning curves (pseudo Dice vs epoch and vs training wall time), the curriculum (voxels per training sample vs
epoch), runtime / CO2 bars and where the training time went, one colour per run, the baseline always drawn black
so it is found at a glance.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

from pgps import fileio
from pgps.report.aggregate import FoldRun, Results
from pgps.report.records import BREAKDOWN_KEYS

PNGS = ("learning_curves.png", "curriculum.png", "runtime_co2.png", "time_breakdown.png")
Runs = dict[str, dict[str, list[FoldRun]]]


def _mean_curve(folds: list[FoldRun], key: str) -> tuple[list[int], list[float]]:
    """Average a per-epoch quantity over folds (folds share the epoch grid; missing values skipped)."""
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for f in folds:
        for p in f.curve():
            value = p["patch_voxels"] * p["batch_size"] if key == "batch_voxels" else p[key]
            if value is not None:
                by_epoch[p["epoch"]].append(value)
    epochs = sorted(by_epoch)
    return epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]


def _colors(names: list[str], baseline: str) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    others = [n for n in names if n != baseline]
    colors: dict[str, Any] = {n: cmap(i % 10) for i, n in enumerate(others)}
    colors[baseline] = "black"
    return colors


def _save(fig: Any, path: Path) -> None:
    with fileio.atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def render_pngs(runs: Runs, results: Results, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tasks = list(runs)
    names = list(next(iter(runs.values())))
    baseline = results.baseline
    colors = _colors(names, baseline)
    style = {"linewidth": 2, "marker": "o", "markersize": 4}

    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 4 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        for name, folds in runs[task].items():
            epochs, dice = _mean_curve(folds, "pseudo_dice")
            at, elapsed = _mean_curve(folds, "elapsed_s")
            axes[row][0].plot(epochs, dice, color=colors[name], label=name, **style)
            by_epoch = dict(zip(epochs, dice))
            timed = [(x, by_epoch[e]) for e, x in zip(at, elapsed) if e in by_epoch]
            axes[row][1].plot([x for x, _ in timed], [y for _, y in timed], color=colors[name], label=name, **style)
        axes[row][0].set(title=f"{task}: pseudo Dice vs epoch", xlabel="epoch", ylabel="pseudo Dice (fg mean)")
        axes[row][1].set(
            title=f"{task}: pseudo Dice vs wall time", xlabel="training wall time (s)", ylabel="pseudo Dice (fg mean)"
        )
        axes[row][0].xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            ax.legend(title="run")
    _save(fig, out / "learning_curves.png")
    plt.close(fig)

    # PGPS and PGPS+ share their patch curriculum (PGPS+ differs in batch size): distinct dashes keep both visible
    dashes = ["-", "--", "-.", ":"]
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 4 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        for i, (name, folds) in enumerate(runs[task].items()):
            for col, key in enumerate(("patch_voxels", "batch_voxels")):
                epochs, values = _mean_curve(folds, key)
                # a step per epoch, drawn to the end of the last epoch
                axes[row][col].step(
                    epochs + [epochs[-1] + 1],
                    values + [values[-1]],
                    where="post",
                    color=colors[name],
                    label=name,
                    linewidth=2.5 if name == baseline else 2,
                    linestyle=dashes[i % len(dashes)],
                )
        axes[row][0].set(
            title=f"{task}: curriculum, voxels per training sample",
            xlabel="epoch",
            ylabel="voxels per sample (epoch mean)",
        )
        axes[row][1].set(
            title=f"{task}: voxels per batch (sample x batch size)",
            xlabel="epoch",
            ylabel="voxels per batch (epoch mean)",
        )
        for ax in axes[row]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(title="run")
    _save(fig, out / "curriculum.png")
    plt.close(fig)

    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 0.6 * len(names) * len(tasks) + 2.5), squeeze=False)
    for row, task in enumerate(tasks):
        rows = results.timing[task]
        labels = list(rows)
        for col, (key, title) in enumerate((("train_time_s", "training time (s)"), ("co2_kg", "kg CO2eq"))):
            ax = axes[row][col]
            values = [rows[n][key] or 0.0 for n in labels]
            bars = ax.barh(labels, values, color=[colors[n] for n in labels])
            ax.bar_label(bars, labels=[_bar_label(rows[n], key, n == baseline) for n in labels], padding=3)
            ax.set(title=f"{task}: {title}", xlabel=title)
            ax.invert_yaxis()
            ax.set_xlim(0, max(values + [1e-12]) * 1.35)
            ax.grid(axis="x", alpha=0.3)
    _save(fig, out / "runtime_co2.png")
    plt.close(fig)
    _time_breakdown(results, out / "time_breakdown.png")
    return list(PNGS)


def _time_breakdown(results: Results, path: Path) -> None:
    """Stacked bars of the training clock's parts per run; final validation drawn apart (not training)."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("Set2")
    parts = [*BREAKDOWN_KEYS, "final_validation"]
    fig, axes = plt.subplots(
        len(results.tasks), 1, figsize=(12, 0.6 * len(results.names) * len(results.tasks) + 2.5), squeeze=False
    )
    for row, task in enumerate(results.tasks):
        ax = axes[row][0]
        labels = list(results.names)
        left = [0.0] * len(labels)
        for i, part in enumerate(parts):
            values = []
            for name in labels:
                t = results.timing[task][name]
                value = t["final_validation_s"] if part == "final_validation" else t["breakdown_s"][part]
                values.append(value or 0.0)
            hatch = "//" if part == "final_validation" else None
            label = part.replace("_", " ") + (" (not training time)" if part == "final_validation" else "")
            ax.barh(labels, values, left=left, color=cmap(i % 8), hatch=hatch, edgecolor="white", label=label)
            left = [a + b for a, b in zip(left, values)]
        ax.set(title=f"{task}: where the training time went (sum over folds)", xlabel="seconds")
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    _save(fig, path)
    plt.close(fig)


def _bar_label(row: dict[str, Any], key: str, is_baseline: bool) -> str:
    value = row[key]
    if value is None:
        return "not tracked"
    text = f"{value:.1f}" if key == "train_time_s" else f"{value:.2e}"
    ratio = row.get("time_ratio" if key == "train_time_s" else "co2_ratio")
    if is_baseline:
        return text + " (baseline)"
    return text + (f" (x{ratio:.2f})" if ratio is not None else "")


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_plot_data(runs: Runs, results: Results, out: Path) -> None:
    """CSV files DVC's `plots` section renders (`dvc plots show`)."""
    curve_cols = [
        "task",
        "run",
        "fold",
        "epoch",
        "stage",
        "elapsed_s",
        "pseudo_dice",
        "ema_pseudo_dice",
        "patch_voxels",
        "batch_size",
        "train_loss",
        "val_loss",
    ]
    curve_rows = [
        {"task": task, "run": name, "fold": f.fold, **{c: p[c] for c in curve_cols[3:]}}
        for task, by_run in runs.items()
        for name, folds in by_run.items()
        for f in folds
        for p in f.curve()
    ]
    fileio.write_text(out / "learning_curves.csv", _csv(curve_rows, curve_cols))
    bar_cols = ["task", "run", "train_time_s", "time_ratio", "energy_kwh", "co2_kg", "co2_ratio"]
    bar_rows = [
        {"task": task, "run": name, **{c: r.get(c) for c in bar_cols[2:]}}
        for task, rows in results.timing.items()
        for name, r in rows.items()
    ]
    fileio.write_text(out / "runtime_co2.csv", _csv(bar_rows, bar_cols))
