"""Each claim's verdict on constructed metrics: every claim reaches 'holds', 'does not hold' and 'not testable
at this size' from the numbers alone (no verdict is written in advance), with the reason the rule gives."""

from __future__ import annotations

import pytest

from pgps.report.aggregate import FoldRun, aggregate
from pgps.report.claims import FAILS, HOLDS, UNTESTABLE, Claim, claims
from report_fixtures import fold_run

CONST, PGPS = "nnUNetTrainerConstant", "nnUNetTrainerPGPS"
BASE = [0.60, 0.62, 0.58, 0.70, 0.66, 0.61, 0.64, 0.59]


def _cases(values: list[float], fold: int = 0) -> dict[str, float]:
    return {f"f{fold}_c{i}": v for i, v in enumerate(values)}


def _shift(values: list[float], by: float) -> list[float]:
    """Every case moved by ``by`` plus a distinct tiny amount (no ties, no zero differences)."""
    return [v + by + 0.0001 * (i + 1) * (1 if by >= 0 else -1) for i, v in enumerate(values)]


def _verdicts(
    runs: dict[str, dict[str, list[FoldRun]]], *, converged: bool = True, alpha: float = 0.05
) -> dict[str, Claim]:
    results = aggregate(runs, "constant", alpha, profile="x", converged=converged, convergence_note="profile `x`")
    return {c.key: c for c in claims(results)["pgps"]}


def _grid(
    tasks: int = 1,
    folds: int = 2,
    pgps_by: float = 0.03,
    pgps_time: float = 50.0,
    pgps_co2: float | None = 1e-4,
    base_co2: float | None = 2e-4,
    extra: dict[str, tuple[float, int]] | None = None,
    cases_per_fold: int = 8,
) -> dict[str, dict[str, list[FoldRun]]]:
    """``tasks`` tasks x ``folds`` folds; PGPS (voxel fraction 0.4) moves every case by ``pgps_by``; ``extra``
    adds constant-patch runs: name -> (per-case shift, iterations per epoch out of 6)."""
    out: dict[str, dict[str, list[FoldRun]]] = {}
    for t in range(tasks):
        by_run: dict[str, list[FoldRun]] = {"constant": [], "pgps": []}
        for f in range(folds):
            base = BASE[:cases_per_fold]
            by_run["constant"].append(fold_run("constant", CONST, f, _cases(base, f), train_s=100.0, co2_kg=base_co2))
            by_run["pgps"].append(
                fold_run(
                    "pgps",
                    PGPS,
                    f,
                    _cases(_shift(base, pgps_by), f),
                    train_s=pgps_time + 2 * f,
                    co2_kg=pgps_co2,
                    voxel_fraction=0.4,
                )
            )
            for name, (by, iters) in (extra or {}).items():
                by_run.setdefault(name, []).append(
                    fold_run(
                        name, CONST, f, _cases(_shift(base, by), f), train_s=100.0 * iters / 6, iters_per_epoch=iters
                    )
                )
        out[f"Task90{t}"] = by_run
    return out


# ------------------------------------------------------------------------------------------ Dice, not worse
def test_dice_not_worse_holds_when_no_task_is_significantly_worse() -> None:
    claim = _verdicts(_grid(pgps_by=0.03))["dice_not_worse"]
    assert claim.verdict == HOLDS and claim.reason == "no significant decrease on the one testable task"
    assert "significantly better on 1, worse on 0 of 1 task" in claim.numbers


def test_dice_not_worse_fails_on_a_significant_decrease() -> None:
    claim = _verdicts(_grid(pgps_by=-0.03))["dice_not_worse"]
    assert claim.verdict == FAILS and claim.reason.startswith("significantly worse on Task900 (Holm p ")


def test_dice_not_worse_untestable_with_too_few_cases_or_below_convergence() -> None:
    claim = _verdicts(_grid(folds=1, cases_per_fold=5, pgps_by=-0.03))["dice_not_worse"]
    assert claim.verdict == UNTESTABLE  # 5 cases all worse: p = 2/32 = 0.0625 >= 0.05, a decrease it cannot see
    assert claim.reason == "at most 5 paired cases per task: the Wilcoxon test cannot reach p < 0.05 (needs >= 6)"
    # each test alone could reach 0.05 with 6 cases (2/64), but Holm over two such tests cannot (2 x 2/64)
    claim = _verdicts(_grid(tasks=2, folds=1, cases_per_fold=6, pgps_by=-0.03))["dice_not_worse"]
    assert claim.verdict == UNTESTABLE and claim.reason == (
        "at most 6 paired cases per task: after Holm over 2 comparisons no test can reach p < 0.05 "
        "(smallest possible corrected p 0.0625)"
    )
    claim = _verdicts(_grid(pgps_by=-0.03), converged=False)["dice_not_worse"]
    assert claim.verdict == UNTESTABLE and claim.reason.startswith("runs below convergence (profile `x`)")


# ------------------------------------------------------------------------------------------ time and CO2
def test_time_half_each_verdict() -> None:
    claim = _verdicts(_grid(pgps_time=50.0))["time_half"]  # ratios 0.50, 0.52
    assert claim.verdict == HOLDS and claim.reason == "mean ratio 0.51 <= 0.60 (about half)"
    assert "0.51 ± 0.01 (mean ± std of 2 task×fold pairs, range 0.50–0.52)" in claim.numbers
    claim = _verdicts(_grid(pgps_time=80.0))["time_half"]
    assert claim.verdict == FAILS and claim.reason == "mean ratio 0.81 > 0.60: not about half"
    claim = _verdicts(_grid(folds=1))["time_half"]
    assert claim.verdict == UNTESTABLE and claim.reason == "one fold on one task gives one ratio and no spread"


def test_co2_each_verdict() -> None:
    claim = _verdicts(_grid(pgps_co2=1e-4))["co2_reduced"]
    assert claim.verdict == HOLDS and "codecarbon tracking mode process" in claim.numbers
    claim = _verdicts(_grid(pgps_co2=1.8e-4))["co2_reduced"]
    assert claim.verdict == FAILS and claim.reason == "mean ratio 0.90 > 0.60: not about half"
    claim = _verdicts(_grid(pgps_co2=None))["co2_reduced"]
    assert claim.verdict == UNTESTABLE and claim.reason == "codecarbon did not track every run"


# ------------------------------------------------------------------------------------------ reduced budget
def test_reduced_budget_baseline_is_found_by_its_compute_not_its_name() -> None:
    """PGPS's compute fraction is 0.4; 'cheap' (2 of 6 iterations: 0.33) is within x1.5, 'tiny' (0.17) is not,
    and the choice does not depend on names."""
    extra = {"tiny": (0.0, 1), "cheap": (-0.02, 2)}
    claim = _verdicts(_grid(extra=extra))["beats_reduced_budget"]
    assert claim.numbers.startswith("`cheap` at compute fraction 0.33 vs PGPS 0.40")
    assert claim.verdict == HOLDS and claim.reason == "significantly better on 1 of 1 tasks"


def test_reduced_budget_each_other_verdict() -> None:
    claim = _verdicts(_grid(extra={"cheap": (0.06, 2)}))["beats_reduced_budget"]
    assert claim.verdict == FAILS and claim.reason == "significantly worse on Task900"
    same = _grid(extra={"cheap": (0.03, 2)})  # identical per-case shifts: no difference at all
    claim = _verdicts(same)["beats_reduced_budget"]
    assert claim.verdict == FAILS and claim.reason == "significantly better on only 0 of 1 tasks (needs a majority)"
    claim = _verdicts(_grid())["beats_reduced_budget"]
    assert claim.verdict == UNTESTABLE and claim.reason.startswith("the grid has no constant-patch run with a reduced")
    claim = _verdicts(_grid(extra={"tiny": (-0.05, 1)}))["beats_reduced_budget"]
    assert claim.verdict == UNTESTABLE
    assert claim.reason == "no reduced-budget run within x1.5 of PGPS's compute (0.40); nearest: `tiny` at 0.17"


# ------------------------------------------------------------------------------------------ most tasks
def test_most_tasks_each_verdict() -> None:
    runs = _grid(tasks=3, pgps_by=0.03)
    for shifted in runs["Task902"]["pgps"]:  # one of three tasks worse
        for case in shifted.metrics["cases"]:
            shifted.metrics["cases"][case] -= 0.06
        shifted.metrics["dice"] -= 0.06
    claim = _verdicts(runs)["most_tasks"]
    assert claim.verdict == HOLDS and claim.reason == "higher on 2 of 3 tasks, a majority"
    for shifted in runs["Task901"]["pgps"]:
        shifted.metrics["dice"] -= 0.06
    claim = _verdicts(runs)["most_tasks"]
    assert claim.verdict == FAILS and claim.reason == "higher on only 1 of 3 tasks, not a majority"
    claim = _verdicts(_grid(tasks=1))["most_tasks"]
    assert claim.verdict == UNTESTABLE and claim.reason == "one task cannot say 'most tasks' (needs >= 3)"
    claim = _verdicts(_grid(tasks=2))["most_tasks"]
    assert claim.verdict == UNTESTABLE and claim.reason == "2 tasks cannot say 'most tasks' (needs >= 3)"


def test_no_pgps_run_means_no_claims() -> None:
    runs = {"T": {"constant": [fold_run("constant", CONST, 0, _cases(BASE))]}}
    assert claims(aggregate(runs, "constant", 0.05)) == {}


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_the_same_numbers_give_the_verdict_their_alpha_allows(alpha: float) -> None:
    """8 cases all better: p = 2/256 = 0.0078 -> significant at 0.05 and at 0.01; 6 cases: 2/64 = 0.031 ->
    only at 0.05 (at 0.01 the test cannot reach significance: not testable, not 'holds')."""
    assert _verdicts(_grid(folds=1), alpha=alpha)["dice_not_worse"].verdict == HOLDS
    six = _verdicts(_grid(folds=1, cases_per_fold=6), alpha=alpha)["dice_not_worse"]
    assert six.verdict == (HOLDS if alpha == 0.05 else UNTESTABLE)
