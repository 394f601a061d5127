"""The tables a reviewer reads: results/report.md, and the short table `pgps reproduce` prints."""

from __future__ import annotations

import math
from typing import Any


def _f(value: float | None, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, fmt)


def summary_table(metrics: dict[str, Any], baseline: str) -> str:
    """Dice / time table (plain text, aligned) for the terminal."""
    header = ("task", "run", "Dice mean±std", "ΔDice", "train time s", "time ratio", "kg CO2eq", "CO2 ratio")
    lines = [header]
    for task, rows in metrics["tasks"].items():
        for name, r in rows.items():
            lines.append(
                (
                    task,
                    name + (" (baseline)" if name == baseline else ""),
                    f"{_f(r['dice_mean'], '.4f')}±{_f(r['dice_std'], '.4f')}",
                    _f(r.get("dice_delta"), "+.4f"),
                    _f(r["train_time_s"], ".1f"),
                    _f(r.get("time_ratio"), ".2f"),
                    _f(r["co2_kg"], ".2e"),
                    _f(r.get("co2_ratio"), ".2f"),
                )
            )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def report_markdown(metrics: dict[str, Any], env: dict[str, Any], baseline: str, alpha: float, plots: list[str]) -> str:
    """results/report.md: results table, Wilcoxon tests, the environment, the plots."""
    out = ["# PGPS reproduction report", ""]
    out += [
        f"Profile `{metrics['profile']}`; folds {metrics['folds']}; baseline run `{baseline}`. "
        "Dice = nnU-Net's `foreground_mean.Dice` on each held-out fold (final validation, sliding window at the "
        "full planned patch), mean ± std over folds. Train time = sum of the epochs' wall time (training + "
        "per-epoch validation). Energy and CO2 from codecarbon's offline tracker, summed over curriculum stages.",
        "",
    ]
    out += ["## Results", ""]
    out.append(
        _md_row(
            [
                "task",
                "run",
                "trainer",
                "folds",
                "Dice mean ± std",
                "ΔDice vs baseline",
                "train time (s)",
                "time ratio",
                "energy (kWh)",
                "kg CO2eq",
                "CO2 ratio",
                "voxel fraction",
            ]
        )
    )
    out.append(_md_row(["---"] * 12))
    for task, rows in metrics["tasks"].items():
        for name, r in rows.items():
            out.append(
                _md_row(
                    [
                        task,
                        f"`{name}`" + (" (baseline)" if name == baseline else ""),
                        f"`{r['trainer_class']}`",
                        str(r["folds"]),
                        f"{_f(r['dice_mean'], '.4f')} ± {_f(r['dice_std'], '.4f')}",
                        _f(r.get("dice_delta"), "+.4f"),
                        _f(r["train_time_s"], ".1f"),
                        _f(r.get("time_ratio"), ".2f"),
                        _f(r["energy_kwh"], ".3e"),
                        _f(r["co2_kg"], ".3e"),
                        _f(r.get("co2_ratio"), ".2f"),
                        _f(r.get("voxel_fraction"), ".3f"),
                    ]
                )
            )
    if any("test_dice_mean" in r for rows in metrics["tasks"].values() for r in rows.values()):
        out += ["", "Test set (imagesTs, labels where available):", ""]
        out.append(_md_row(["task", "run", "test Dice mean ± std"]))
        out.append(_md_row(["---"] * 3))
        for task, rows in metrics["tasks"].items():
            for name, r in rows.items():
                if "test_dice_mean" in r:
                    out.append(
                        _md_row(
                            [task, f"`{name}`", f"{_f(r['test_dice_mean'], '.4f')} ± {_f(r['test_dice_std'], '.4f')}"]
                        )
                    )
    out += ["", f"## Wilcoxon signed-rank tests (per-case Dice vs `{baseline}`, two-sided, α = {alpha})", ""]
    out.append(_md_row(["task", "run", "cases", "statistic", "p-value", "significant", "note"]))
    out.append(_md_row(["---"] * 7))
    for task, rows in metrics["tasks"].items():
        for name, r in rows.items():
            if name == baseline or "wilcoxon_n" not in r:
                continue
            direction = "better" if (r.get("dice_delta") or 0) > 0 else "worse"
            sig = f"yes ({direction})" if r["significant"] else "no"
            out.append(
                _md_row(
                    [
                        task,
                        f"`{name}`",
                        str(r["wilcoxon_n"]),
                        _f(r.get("wilcoxon_stat"), ".1f"),
                        _f(r["wilcoxon_p"], ".4g"),
                        sig,
                        r["wilcoxon_note"],
                    ]
                )
            )
    out += ["", "## Environment", "", "```"]
    for key, value in env.items():
        if key == "packages":
            out.append("packages: " + ", ".join(f"{k}=={v}" for k, v in value.items()))
        else:
            out.append(f"{key}: {value}")
    out += ["```", "", "## Plots", ""]
    out += [f"![{p}](plots/{p})" for p in plots]
    return "\n".join(out) + "\n"
