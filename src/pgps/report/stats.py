"""The statistics a verdict rests on: paired per-case differences, their Wilcoxon signed-rank test, Holm's
correction over every comparison of one report.

Direction comes from the per-case differences themselves (the sign of their median, of their mean when the
median is 0), never from the difference of fold means: a run can have the higher mean Dice and still be worse
on most cases, and the test is about cases. Significance comes from the Holm-corrected p-value.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class PairedTest:
    """Per-case comparison of a run with a reference run (differences are run minus reference)."""

    n: int  # cases both runs scored (NaN cases left out)
    n_nonzero: int  # cases whose Dice differ: the Wilcoxon test ranks only these
    median_diff: float | None
    mean_diff: float | None
    direction: int  # +1 run better, -1 run worse, 0 no difference
    statistic: float | None
    p_raw: float | None  # None: no paired case, nothing was tested
    note: str


def paired_differences(run_cases: dict[str, float | None], ref_cases: dict[str, float | None]) -> list[float]:
    """run - reference for every case both scored (a NaN/None case is one neither can be judged on)."""

    def usable(value: float | None) -> bool:
        return value is not None and not math.isnan(value)

    common = sorted(set(run_cases) & set(ref_cases))
    return [
        float(run_cases[c]) - float(ref_cases[c])  # type: ignore[arg-type]
        for c in common
        if usable(run_cases[c]) and usable(ref_cases[c])
    ]


def direction(diffs: list[float]) -> int:
    """+1 / -1 / 0 from the median per-case difference, the mean breaking a median of exactly 0."""
    if not diffs:
        return 0
    for centre in (statistics.median(diffs), statistics.fmean(diffs)):
        if centre > 0:
            return 1
        if centre < 0:
            return -1
    return 0


def min_attainable_p(n_nonzero: int) -> float:
    """The smallest two-sided p the exact signed-rank test can give with n non-zero differences: all of one
    sign, probability 2 / 2**n. Below 6 cases this is >= 0.0625, so p < 0.05 is out of reach."""
    return 1.0 if n_nonzero <= 0 else min(1.0, 2.0 ** (1 - n_nonzero))


def can_reach(n: int, alpha: float, family: list[int]) -> bool:
    """Could a test on ``n`` paired cases come out significant after Holm over a family of tests on ``family``
    paired cases each (itself included)? Its corrected p is at least its own smallest attainable p, and at
    least the family size times the smallest attainable p of any member (Holm's first step bounds every later
    one); both must be below ``alpha``."""
    floor = max(1, len(family)) * min((min_attainable_p(k) for k in family), default=min_attainable_p(n))
    return min_attainable_p(n) < alpha and floor < alpha


def cases_needed(alpha: float) -> int:
    """Paired cases a two-sided signed-rank test needs before any outcome can reach p < alpha (6 for 0.05)."""
    n = 1
    while min_attainable_p(n) >= alpha:
        n += 1
    return n


def wilcoxon(run_cases: dict[str, float | None], ref_cases: dict[str, float | None]) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test on the paired per-case Dice (zero differences dropped, scipy's
    ``zero_method='wilcox'``; exact distribution where scipy uses it)."""
    diffs = paired_differences(run_cases, ref_cases)
    n = len(diffs)
    if n == 0:
        return PairedTest(0, 0, None, None, 0, None, None, "no case scored by both runs: not tested")
    nonzero = [d for d in diffs if d != 0]
    median, mean = statistics.median(diffs), statistics.fmean(diffs)
    if not nonzero:
        return PairedTest(n, 0, median, mean, 0, None, 1.0, f"n={n}, every per-case Dice identical: p = 1")
    from scipy.stats import wilcoxon as scipy_wilcoxon

    result = scipy_wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided")
    note = f"n={n}" + (f", {n - len(nonzero)} ties at 0 dropped" if len(nonzero) < n else "")
    return PairedTest(
        n, len(nonzero), median, mean, direction(diffs), float(result.statistic), float(result.pvalue), note
    )


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment; ``None`` (no test) stays ``None`` and is not part of the family.

    Sorted ascending, the k-th smallest of m p-values is multiplied by (m - k + 1); each adjusted value is
    at least the previous one (monotone) and at most 1. Returned in the input order."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(tested)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for k, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - k) * p))
        adjusted[i] = running
    return adjusted


def significance(test: PairedTest, p_holm: float | None, alpha: float) -> int:
    """+1 significantly better, -1 significantly worse, 0 not significant (or not tested)."""
    if p_holm is None or p_holm >= alpha:
        return 0
    return test.direction
