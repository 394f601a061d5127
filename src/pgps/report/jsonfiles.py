"""The layouts of the report's two JSON files.

``results/metrics.json`` -- the DVC metric, committed (``cache: false``): ONLY numbers a seeded re-run reproduces
exactly, and only numbers (null where there is none, never NaN, no strings), a handful per run so that
``dvc metrics show`` stays readable (per class, raw p, voxel fraction, epochs: in report.md)::

    {"<task>": {"<run>": {"dice_mean": float, "dice_std": float|null,        # null: one fold, no spread
                          "dice_folds": {"fold_<k>": float},
                          # every run but the baseline (which lacks these keys):
                          "dice_delta": float, "p_holm": float|null,
                          "significance": -1|0|1,                              # Holm-corrected, per-case direction
                          # a PGPS run, vs the reduced-budget baseline at its compute:
                          "vs_<run>": {"dice_delta", "p_holm", "significance"},
                          "test_dice_mean": float}}}                          # with evaluate.predict_test

``results/timings.json`` -- measured, never reproduced exactly (a plain DVC output, not a metric)::

    {"clock": "<definition>", "codecarbon_tracking_modes": ["machine"|"process"],
     "tasks": {"<task>": {"<run>": {"train_time_s", "time_ratio", "train_time_folds": {"<k>": s},
                                    "time_ratio_folds", "dead_s", "lost_s", "final_validation_s",
                                    "breakdown_s": {"network_steps", "loader_wait", "validation",
                                                    "epoch_end", "stage_switch", "other"},
                                    "energy_kwh", "co2_kg", "energy_ratio", "co2_ratio", "co2_ratio_folds",
                                    "codecarbon_span_s", "tracking_modes"}}}}
"""

from __future__ import annotations

from typing import Any

from pgps.report.aggregate import Comparison, Results


def _test_numbers(c: Comparison) -> dict[str, Any]:
    return {"dice_delta": c.dice_delta, "p_holm": c.p_holm, "significance": c.significance}


def metrics_document(results: Results) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for task in results.tasks:
        out[task] = {}
        for name in results.names:
            r = results.rows[task][name]
            entry: dict[str, Any] = {
                "dice_mean": r["dice_mean"],
                "dice_std": r["dice_std"],
                "dice_folds": {f"fold_{k}": v for k, v in sorted(r["dice_folds"].items())},
            }
            for c in results.comparisons:
                if c.task == task and c.run == name:
                    if c.reference == results.baseline:
                        entry.update(_test_numbers(c))
                    else:
                        entry[f"vs_{c.reference}"] = _test_numbers(c)
            if "test_dice_mean" in r:
                entry["test_dice_mean"] = r["test_dice_mean"]
            out[task][name] = entry
    return out


TIMING_KEYS = (
    "train_time_s",
    "time_ratio",
    "train_time_folds",
    "time_ratio_folds",
    "dead_s",
    "lost_s",
    "final_validation_s",
    "breakdown_s",
    "energy_kwh",
    "co2_kg",
    "energy_ratio",
    "co2_ratio",
    "co2_ratio_folds",
    "codecarbon_span_s",
    "tracking_modes",
)


def timings_document(results: Results) -> dict[str, Any]:
    modes = sorted({m for t in results.tasks for n in results.names for m in results.timing[t][n]["tracking_modes"]})
    return {
        "clock": results.clock_definition,
        "codecarbon_tracking_modes": modes,
        "tasks": {
            t: {n: {k: results.timing[t][n].get(k) for k in TIMING_KEYS} for n in results.names} for t in results.tasks
        },
    }
