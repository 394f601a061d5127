"""The paper's claims, each set against this run's numbers, with a verdict and its reason.

Nothing here is decided in advance: each verdict follows from the aggregated numbers by the rule stated in
its reason -- "holds", "does not hold", or "not testable at this size" when the grid is too small to say
(one task cannot say "most tasks", one fold gives no spread, too few paired cases cannot reach significance,
runs stopped below convergence say nothing about converged Dice).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from pgps.report import fmt, stats
from pgps.report.aggregate import PGPS_CLASS, Comparison, Results

HOLDS = "holds"
FAILS = "does not hold"
UNTESTABLE = "not testable at this size"
#: "about 50 % of the training time" (and of the CO2): holds up to this ratio to the baseline
HALF_MAX_RATIO = 0.6
#: "most tasks" needs at least this many tasks to mean anything
MIN_TASKS_FOR_MOST = 3


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str  # what the paper claims
    numbers: str  # this run's numbers, with their spread
    verdict: str
    reason: str


def _untestable_dice(results: Results) -> list[str]:
    if results.converged:
        return []
    return [f"runs below convergence ({results.convergence_note}): their Dice says nothing about converged Dice"]


def _testable(results: Results, comps: list[Comparison]) -> list[Comparison]:
    """Comparisons whose size lets the test find a difference (judged on the paired cases, before seeing how
    many differ: identical results on enough cases are evidence of no difference, not a lack of evidence)."""
    return [c for c in comps if results.can_reach(c)]


def _too_few_cases(results: Results, comps: list[Comparison]) -> str:
    most = max((c.test.n for c in comps), default=0)
    alpha, m = results.alpha, results.family_size
    if stats.min_attainable_p(most) >= alpha:
        return (
            f"at most {most} paired cases per task: the Wilcoxon test cannot reach p < {alpha:g} "
            f"(needs >= {stats.cases_needed(alpha)})"
        )
    floor = m * min(stats.min_attainable_p(n) for n in results.family)
    return (
        f"at most {most} paired cases per task: after Holm over {m} comparisons no test can reach p < {alpha:g} "
        f"(smallest possible corrected p {floor:.3g})"
    )


def _tests_line(results: Results, comps: list[Comparison]) -> str:
    better = sum(1 for c in comps if c.significance > 0)
    worse = sum(1 for c in comps if c.significance < 0)
    return (
        f"significantly better on {better}, worse on {worse} of {len(comps)} task{'s' if len(comps) != 1 else ''} "
        f"(Holm-corrected Wilcoxon, α {results.alpha:g})"
    )


def _delta_line(results: Results, comps: list[Comparison], ref: str) -> str:
    if len(comps) == 1:
        c = comps[0]
        folds = list(c.delta_folds.values())
        std = statistics.stdev(folds) if len(folds) > 1 else None
        return (
            f"ΔDice vs `{ref}` {fmt.signed(c.dice_delta)} ± {fmt.num(std, '.4f')} over {len(folds)} "
            f"fold{'s' if len(folds) != 1 else ''}; per-case median Δ {fmt.signed(c.test.median_diff)} over "
            f"{c.test.n} cases, p {fmt.p_value(c.test.p_raw)} (Holm {fmt.p_value(c.p_holm)})"
        )
    deltas = [c.dice_delta for c in comps if c.dice_delta is not None]
    std = statistics.stdev(deltas) if len(deltas) > 1 else None
    return (
        f"ΔDice vs `{ref}` {fmt.signed(statistics.fmean(deltas) if deltas else None)} ± {fmt.num(std, '.4f')} "
        f"over {len(deltas)} tasks (range {fmt.signed(min(deltas, default=None))} … "
        f"{fmt.signed(max(deltas, default=None))})"
    )


def dice_not_worse(results: Results, run: str) -> Claim:
    comps = [c for t in results.tasks if (c := results.comparison(t, run, results.baseline))]
    numbers = f"{_delta_line(results, comps, results.baseline)}; {_tests_line(results, comps)}"
    statement = "Dice equal to or better than the constant-patch baseline: no significant decrease"
    reasons = _untestable_dice(results)
    worse = [c for c in comps if c.significance < 0]
    testable = _testable(results, comps)
    if reasons:
        return Claim("dice_not_worse", statement, numbers, UNTESTABLE, "; ".join(reasons))
    if worse:
        where = ", ".join(f"{c.task} (Holm p {fmt.p_value(c.p_holm)})" for c in worse)
        return Claim("dice_not_worse", statement, numbers, FAILS, f"significantly worse on {where}")
    if not testable:
        return Claim("dice_not_worse", statement, numbers, UNTESTABLE, _too_few_cases(results, comps))
    small = len(comps) - len(testable)
    scope = "the one testable task" if len(testable) == 1 else f"any of the {len(testable)} testable tasks"
    reason = f"no significant decrease on {scope}" + (
        f" ({small} task{'s' if small != 1 else ''} too small to test)" if small else ""
    )
    return Claim("dice_not_worse", statement, numbers, HOLDS, reason)


def _ratio_claim(key: str, statement: str, what: str, pairs: list[float], total: float | None) -> Claim:
    numbers = (
        f"{what} ratio {fmt.spread(pairs, 'task×fold pair')}; all tasks and folds together {fmt.num(total, '.2f')}"
    )
    if not pairs:
        return Claim(key, statement, "n/a", UNTESTABLE, f"no paired {what} measurement")
    if len(pairs) < 2:
        return Claim(key, statement, numbers, UNTESTABLE, "one fold on one task gives one ratio and no spread")
    mean = statistics.fmean(pairs)
    if mean <= HALF_MAX_RATIO:
        return Claim(key, statement, numbers, HOLDS, f"mean ratio {mean:.2f} <= {HALF_MAX_RATIO:.2f} (about half)")
    return Claim(key, statement, numbers, FAILS, f"mean ratio {mean:.2f} > {HALF_MAX_RATIO:.2f}: not about half")


def _total_ratio(results: Results, run: str, key: str) -> float | None:
    values = [results.timing[t][run][key] for t in results.tasks]
    bases = [results.timing[t][results.baseline][key] for t in results.tasks]
    if any(v is None for v in values + bases) or not sum(bases):
        return None
    return sum(values) / sum(bases)


def time_half(results: Results, run: str) -> Claim:
    pairs = [r for t in results.tasks for r in results.timing[t][run].get("time_ratio_folds", {}).values()]
    return _ratio_claim(
        "time_half",
        "training time about 50 % of the baseline's (one training clock)",
        "time",
        pairs,
        _total_ratio(results, run, "train_time_s"),
    )


def co2_reduced(results: Results, run: str) -> Claim:
    statement = "CO2 reduced accordingly (codecarbon over the same training spans)"
    timings = [results.timing[t][n] for t in results.tasks for n in (run, results.baseline)]
    if not all(t["tracked"] for t in timings):
        return Claim("co2_reduced", statement, "n/a", UNTESTABLE, "codecarbon did not track every run")
    pairs = [r for t in results.tasks for r in results.timing[t][run].get("co2_ratio_folds", {}).values()]
    claim = _ratio_claim("co2_reduced", statement, "CO2", pairs, _total_ratio(results, run, "co2_kg"))
    modes = sorted({m for t in timings for m in t["tracking_modes"]})
    note = f"codecarbon tracking mode {', '.join(modes) or 'unknown'}"
    if "machine" in modes:
        note += " (the whole machine's power: other jobs' load counts too)"
    return Claim(claim.key, statement, f"{claim.numbers}; {note}", claim.verdict, claim.reason)


def beats_reduced_budget(results: Results, run: str) -> Claim:
    statement = "better than the constant-patch baseline with a reduced budget at the same compute"
    match = results.reduced.get(run) or {"run": None, "note": "no reduced-budget run identified"}
    ref = match["run"]
    if ref is None:
        return Claim("beats_reduced_budget", statement, "n/a", UNTESTABLE, match["note"])
    comps = [c for t in results.tasks if (c := results.comparison(t, run, ref))]
    numbers = (
        f"`{ref}` at compute fraction {fmt.num(match['compute_fraction'], '.2f')} vs PGPS "
        f"{fmt.num(match['pgps_compute_fraction'], '.2f')}; {_delta_line(results, comps, ref)}; "
        f"{_tests_line(results, comps)}"
    )
    reasons = _untestable_dice(results)
    if reasons:
        return Claim("beats_reduced_budget", statement, numbers, UNTESTABLE, "; ".join(reasons))
    worse = [c.task for c in comps if c.significance < 0]
    if worse:
        return Claim("beats_reduced_budget", statement, numbers, FAILS, f"significantly worse on {', '.join(worse)}")
    if not _testable(results, comps):
        return Claim("beats_reduced_budget", statement, numbers, UNTESTABLE, _too_few_cases(results, comps))
    better = sum(1 for c in comps if c.significance > 0)
    if better * 2 > len(comps):
        return Claim(
            "beats_reduced_budget",
            statement,
            numbers,
            HOLDS,
            f"significantly better on {better} of {len(comps)} tasks",
        )
    return Claim(
        "beats_reduced_budget",
        statement,
        numbers,
        FAILS,
        f"significantly better on only {better} of {len(comps)} tasks (needs a majority)",
    )


def most_tasks(results: Results, run: str) -> Claim:
    statement = "better Dice than the baseline on most tasks (paper: 7 of 10 MSD tasks)"
    comps = [c for t in results.tasks if (c := results.comparison(t, run, results.baseline))]
    higher = sum(1 for c in comps if c.dice_delta is not None and c.dice_delta > 0)
    significant = sum(1 for c in comps if c.significance > 0)
    m = len(comps)
    numbers = f"higher mean Dice on {higher} of {m} task{'s' if m != 1 else ''}, significantly on {significant}"
    reasons = []
    if m < MIN_TASKS_FOR_MOST:
        reasons.append(
            f"{'one task' if m == 1 else f'{m} tasks'} cannot say 'most tasks' (needs >= {MIN_TASKS_FOR_MOST})"
        )
    reasons += _untestable_dice(results)
    if reasons:
        return Claim("most_tasks", statement, numbers, UNTESTABLE, "; ".join(reasons))
    if higher * 2 > m:
        return Claim("most_tasks", statement, numbers, HOLDS, f"higher on {higher} of {m} tasks, a majority")
    return Claim("most_tasks", statement, numbers, FAILS, f"higher on only {higher} of {m} tasks, not a majority")


def claims(results: Results) -> dict[str, list[Claim]]:
    """PGPS run name -> its claims, in the paper's order (empty if the grid has no PGPS run)."""
    return {
        run: [
            dice_not_worse(results, run),
            time_half(results, run),
            co2_reduced(results, run),
            beats_reduced_budget(results, run),
            most_tasks(results, run),
        ]
        for run in results.pgps_runs()
    }


def no_pgps_note() -> str:
    return f"The grid has no run of `{PGPS_CLASS}`: the paper's claims are not testable with it."
