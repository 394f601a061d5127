"""What the report says, in order: the claims and their verdicts first, then the paper-style table, per-class
Dice, the tests, the one training clock (and where its time went), the long per-run table, the environment and
the plots. Returned as document blocks; pgps.report.document renders them to Markdown and HTML."""

from __future__ import annotations

from typing import Any

from pgps.report import claims as claims_mod
from pgps.report import fmt
from pgps.report.aggregate import Results
from pgps.report.document import Banner, Block, Code, Heading, Image, Paragraph, Table
from pgps.report.records import BREAKDOWN_KEYS
from pgps.report.tables import LEGEND, dice_table

TITLE = "PGPS reproduction report"
PLOT_CAPTIONS = {
    "learning_curves.png": "Pseudo Dice (per-epoch validation) vs epoch and vs training wall time",
    "curriculum.png": "The curriculum the networks saw: voxels per training sample and per batch, per epoch",
    "runtime_co2.png": "Training wall time and CO2 per run (ratio to the baseline in brackets)",
    "time_breakdown.png": "Where the training time went (final validation shown apart: not training time)",
}


def _banner(results: Results) -> list[Block]:
    if results.converged:
        return []
    return [
        Banner(
            f"Below convergence: {results.convergence_note} (the paper: 1000 x 250). These numbers show that the "
            "pipeline trains and measures, not what PGPS achieves; the Dice claims are marked not testable. "
            "(Runs that did converge: set report.converged: true in params.yaml.)"
        )
    ]


def _intro(results: Results) -> Paragraph:
    return Paragraph(
        f"Profile `{results.profile}`; {len(results.tasks)} task{'s' if len(results.tasks) != 1 else ''}; folds "
        f"{results.folds}; baseline run `{results.baseline}`. Dice = nnU-Net's `foreground_mean.Dice` on each "
        "held-out fold (final validation, sliding window at the full planned patch), mean ± std over folds. "
        f"Training time: {results.clock_definition}. Energy and CO2: codecarbon over the same training spans. "
        "Tests: two-sided Wilcoxon signed-rank on per-case Dice, direction from the per-case differences, "
        f"Holm-corrected over all comparisons of this report ({results.family_size}), α = {results.alpha:g}."
    )


def _claims(results: Results) -> list[Block]:
    out: list[Block] = [Heading(2, "Claims")]
    by_run = claims_mod.claims(results)
    if not by_run:
        return out + [Paragraph(claims_mod.no_pgps_note())]
    for run, items in by_run.items():
        if len(by_run) > 1:
            out.append(Heading(3, f"`{run}`"))
        else:
            out.append(Paragraph(f"The paper's claims for `{run}` against this run's numbers."))
        out.append(
            Table(
                ["claim (paper)", "this run", "verdict", "why"],
                [[c.statement, c.numbers, c.verdict, c.reason] for c in items],
                "claims",
            )
        )
    return out


def _per_class(results: Results) -> list[Block]:
    multi = [t for t in results.tasks if len(results.rows[t][results.baseline]["dice_classes"]) > 1]
    if not multi:
        return []
    out: list[Block] = [
        Heading(2, "Per-class Dice (multi-label tasks)"),
        Paragraph("Per label: nnU-Net's mean Dice over the fold's cases, mean ± std over folds."),
    ]
    for task in multi:
        classes = list(results.rows[task][results.baseline]["dice_classes"])
        rows = []
        for name in results.names:
            r = results.rows[task][name]
            rows.append(
                [f"`{name}`"]
                + [fmt.mean_pm(r["dice_classes"].get(c), r["dice_classes_std"].get(c)) for c in classes]
                + [fmt.mean_pm(r["dice_mean"], r["dice_std"])]
            )
        out += [Paragraph(f"**{task}**"), Table(["run"] + classes + ["foreground mean"], rows)]
    return out


def _result_word(results: Results, c: Any) -> str:
    if c.test.p_raw is None:
        return "not tested"
    word = {1: "better", -1: "worse"}.get(c.significance, "no significant difference")
    if not results.can_reach(c):
        word += " (too few cases to reach α)"
    return word


def _tests(results: Results) -> list[Block]:
    rows = [
        [
            c.task,
            f"`{c.run}`",
            f"`{c.reference}`",
            str(c.test.n),
            fmt.signed(c.test.median_diff),
            fmt.signed(c.test.mean_diff),
            fmt.signed(c.dice_delta),
            fmt.num(c.test.statistic, ".1f"),
            fmt.p_value(c.test.p_raw),
            fmt.p_value(c.p_holm),
            _result_word(results, c),
            c.test.note,
        ]
        for c in results.comparisons
    ]
    return [
        Heading(2, "Statistical tests"),
        Paragraph(
            "Each run vs the baseline, and each PGPS run vs the reduced-budget baseline at its compute. Δ = run − "
            "reference per case; better / worse = the sign of the median per-case Δ (the mean where the median is "
            f"0) when the Holm-corrected p < {results.alpha:g}. ΔDice (fold means) is shown, not used for the verdict."
        ),
        Table(
            [
                "task",
                "run",
                "vs",
                "paired cases",
                "median Δ per case",
                "mean Δ per case",
                "ΔDice (fold means)",
                "W",
                "p (raw)",
                "p (Holm)",
                "result",
                "note",
            ],
            rows,
        ),
    ]


def _timing(results: Results) -> list[Block]:
    modes = sorted({m for t in results.tasks for n in results.names for m in results.timing[t][n]["tracking_modes"]})
    rows, where = [], []
    for task in results.tasks:
        for name in results.names:
            t = results.timing[task][name]
            base = name == results.baseline
            rows.append(
                [
                    task,
                    f"`{name}`",
                    fmt.num(t["train_time_s"], ".1f"),
                    "1 (baseline)" if base else fmt.spread(list(t.get("time_ratio_folds", {}).values()), "fold"),
                    fmt.num(t["dead_s"], ".1f"),
                    fmt.num(t["lost_s"], ".1f"),
                    fmt.num(t["final_validation_s"], ".1f"),
                    fmt.num(t["energy_kwh"], ".3e"),
                    fmt.num(t["co2_kg"], ".3e"),
                    "1 (baseline)" if base else fmt.spread(list(t.get("co2_ratio_folds", {}).values()), "fold"),
                    fmt.num(t["codecarbon_span_s"], ".1f"),
                    ", ".join(t["tracking_modes"]) or "not tracked",
                ]
            )
            total = t["train_time_s"] or 0.0
            where.append(
                [task, f"`{name}`"]
                + [
                    f"{t['breakdown_s'][k]:.1f} ({100 * t['breakdown_s'][k] / total:.0f} %)" if total else "n/a"
                    for k in BREAKDOWN_KEYS
                ]
                + [fmt.num(t["final_validation_s"], ".1f")]
            )
    return [
        Heading(2, "Training time, energy and CO2"),
        Paragraph(
            f"One clock: {results.clock_definition}. Sums over folds; ratios per fold against the baseline's "
            "same fold. "
            f"codecarbon tracking mode: {', '.join(modes) or 'not tracked'} (`process`: this run's processes; "
            "`machine`: the whole machine, other jobs' load included)."
        ),
        Table(
            [
                "task",
                "run",
                "training time (s)",
                "time ratio",
                "dead time (s)",
                "lost work (s)",
                "final validation (s)",
                "energy (kWh)",
                "kg CO2eq",
                "CO2 ratio",
                "codecarbon span (s)",
                "tracking mode",
            ],
            rows,
        ),
        Heading(3, "Where the training time went"),
        Paragraph(
            "Seconds and share of the training time. Final validation (nnU-Net's `perform_actual_validation`) "
            "is not training time and is shown apart."
        ),
        Table(
            ["task", "run"] + [k.replace("_", " ") for k in BREAKDOWN_KEYS] + ["final validation (s)"],
            where,
        ),
    ]


def _long_table(results: Results) -> list[Block]:
    rows = []
    for task in results.tasks:
        for name in results.names:
            r, t = results.rows[task][name], results.timing[task][name]
            c = results.comparison(task, name, results.baseline)
            rows.append(
                [
                    task,
                    f"`{name}`" + (" (baseline)" if name == results.baseline else ""),
                    f"`{r['trainer_class']}`",
                    str(r["folds"]),
                    fmt.mean_pm(r["dice_mean"], r["dice_std"]),
                    fmt.signed(c.dice_delta if c else None),
                    fmt.num(r["voxel_fraction"], ".3f"),
                    fmt.num(r["compute_fraction"], ".3f"),
                    fmt.num(r["epochs"], ".0f"),
                    fmt.num(t["train_time_s"], ".1f"),
                    fmt.num(t.get("time_ratio"), ".2f"),
                    fmt.num(t["energy_kwh"], ".3e"),
                    fmt.num(t["co2_kg"], ".3e"),
                    fmt.num(t.get("co2_ratio"), ".2f"),
                ]
            )
    out: list[Block] = [
        Heading(2, "All runs"),
        Table(
            [
                "task",
                "run",
                "trainer",
                "folds",
                "Dice mean ± std",
                "ΔDice vs baseline",
                "voxel fraction",
                "compute fraction",
                "epochs",
                "training time (s)",
                "time ratio",
                "energy (kWh)",
                "kg CO2eq",
                "CO2 ratio",
            ],
            rows,
        ),
    ]
    tested = [(t, n) for t in results.tasks for n in results.names if "test_dice_mean" in results.rows[t][n]]
    if tested:
        out += [
            Paragraph("Test set (imagesTs, scored where labels exist):"),
            Table(
                ["task", "run", "test Dice mean ± std"],
                [
                    [
                        t,
                        f"`{n}`",
                        fmt.mean_pm(results.rows[t][n]["test_dice_mean"], results.rows[t][n]["test_dice_std"]),
                    ]
                    for t, n in tested
                ],
            ),
        ]
    return out


def _environment(env: dict[str, Any]) -> list[Block]:
    lines = []
    for key, value in env.items():
        if key == "packages":
            lines.append("packages: " + ", ".join(f"{k}=={v}" for k, v in value.items()))
        else:
            lines.append(f"{key}: {value}")
    return [Heading(2, "Environment"), Code("\n".join(lines))]


def report_blocks(
    results: Results,
    metrics: dict[str, Any],
    timings: dict[str, Any],
    env: dict[str, Any],
    plots: list[str],
) -> list[Block]:
    return [
        Heading(1, TITLE),
        *_banner(results),
        _intro(results),
        *_claims(results),
        Heading(2, "Dice per task and method"),
        dice_table(metrics, timings),
        Paragraph(LEGEND + " Time and CO2 rows: training time / CO2 relative to the baseline, mean over tasks."),
        *_per_class(results),
        *_tests(results),
        *_timing(results),
        *_long_table(results),
        *_environment(env),
        Heading(2, "Plots"),
        *[Image(p, PLOT_CAPTIONS.get(p, p)) for p in plots],
    ]
