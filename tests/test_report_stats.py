"""The report's statistics against independent expectations: Holm and the direction logic against values
computed by hand (literals), the Wilcoxon p against its exact distribution (2 / 2**n when every case moves
the same way) and scipy as the reference implementation of the test itself."""

from __future__ import annotations

import pytest
from scipy.stats import wilcoxon as scipy_wilcoxon

from pgps.report import stats
from pgps.report.aggregate import aggregate
from pgps.report.jsonfiles import metrics_document
from report_fixtures import fold_run


def test_holm_by_hand() -> None:
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> monotone 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # a comparison without a test is not part of the family: m = 2
    assert stats.holm([None, 0.02, 0.5]) == [None, pytest.approx(0.04), pytest.approx(0.5)]
    # capped at 1, and never below an earlier adjusted value
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]
    assert stats.holm([0.001]) == [0.001]
    assert stats.holm([]) == []


def test_direction_follows_the_cases_not_the_mean() -> None:
    # one case much better, six slightly worse: the mean says +, the typical case says -
    diffs = [0.8] + [-0.02] * 6
    assert sum(diffs) / len(diffs) > 0
    assert stats.direction(diffs) == -1
    # median exactly 0: the mean breaks the tie
    assert stats.direction([0.0, 0.0, 0.0, 0.3, -0.1]) == 1
    assert stats.direction([0.0, 0.0, 0.0, -0.3, 0.1]) == -1
    assert stats.direction([0.0, 0.0]) == 0
    assert stats.direction([]) == 0


def test_wilcoxon_exact_values_and_scipy() -> None:
    base = {f"c{i}": 0.5 for i in range(8)}
    better = {f"c{i}": 0.5 + 0.01 * (i + 1) for i in range(8)}
    t = stats.wilcoxon(better, base)
    assert (t.n, t.n_nonzero, t.direction) == (8, 8, 1)
    assert t.p_raw == pytest.approx(2 / 2**8)  # every case better: exact two-sided p
    assert t.median_diff == pytest.approx(0.045) and t.mean_diff == pytest.approx(0.045)
    five = stats.wilcoxon({k: better[k] for k in list(base)[:5]}, base)
    assert five.p_raw == pytest.approx(2 / 2**5) and five.p_raw > 0.05  # 5 cases can never reach 0.05
    mixed_run = [0.61, 0.55, 0.70, 0.42, 0.66, 0.59, 0.71, 0.50, 0.63]
    mixed_ref = [0.60, 0.58, 0.64, 0.45, 0.61, 0.52, 0.69, 0.47, 0.64]
    t = stats.wilcoxon({f"c{i}": v for i, v in enumerate(mixed_run)}, {f"c{i}": v for i, v in enumerate(mixed_ref)})
    ref = scipy_wilcoxon(mixed_run, mixed_ref)
    assert t.p_raw == pytest.approx(ref.pvalue) and t.statistic == pytest.approx(ref.statistic)


def test_wilcoxon_edge_cases() -> None:
    same = {"a": 0.5, "b": 0.6}
    t = stats.wilcoxon(same, dict(same))
    assert (t.p_raw, t.direction, t.n, t.n_nonzero) == (1.0, 0, 2, 0)
    t = stats.wilcoxon({"a": 0.5}, {"b": 0.5})
    assert (t.p_raw, t.n) == (None, 0)
    # NaN / None cases (label absent in both) are not paired
    t = stats.wilcoxon({"a": 0.7, "b": None, "c": float("nan")}, {"a": 0.6, "b": 0.5, "c": 0.5})
    assert t.n == 1 and t.median_diff == pytest.approx(0.1)


def test_significance_and_reachability() -> None:
    worse = stats.PairedTest(10, 10, -0.02, 0.01, -1, 5.0, 0.004, "")
    assert stats.significance(worse, 0.01, 0.05) == -1
    assert stats.significance(worse, 0.06, 0.05) == 0
    assert stats.significance(worse, None, 0.05) == 0
    # alone: 5 cases give at best 2/32 = 0.0625, 6 cases 2/64 = 0.03125
    assert not stats.can_reach(5, 0.05, [5]) and stats.can_reach(6, 0.05, [6])
    # Holm's first step: 2 tests of 6 cases -> at best 2 x 0.03125 = 0.0625; beside a large test, 0.03125 stays
    assert not stats.can_reach(6, 0.05, [6, 6]) and stats.can_reach(6, 0.05, [6, 20])
    assert not stats.can_reach(7, 0.05, [7] * 4) and stats.can_reach(8, 0.05, [8] * 4)  # 4/64, 4/128
    assert not stats.can_reach(0, 0.05, [])
    assert stats.cases_needed(0.05) == 6 and stats.cases_needed(0.01) == 8


def test_verdict_comes_from_cases_and_holm_over_the_whole_report() -> None:
    """Run A: higher fold-mean Dice than the baseline but worse on 19 of 20 cases -> 'worse'. Runs B and C:
    better on every one of 6 cases (raw p = 2/64 = 0.03125 < 0.05), but in a family of three comparisons
    where A's p is the smallest, Holm multiplies theirs by 2: 0.0625, not significant."""
    base = {f"c{i:02d}": 0.6 for i in range(20)}
    a = {c: 0.6 - 0.001 * (i + 1) for i, c in enumerate(base)}
    a["c00"] = 1.0  # one large gain
    b = {c: (0.6 + 0.01 * (i + 1) if i < 6 else 0.6) for i, c in enumerate(base)}
    runs = {
        "Task901_PGPSSynth": {
            "constant": [fold_run("constant", "nnUNetTrainerConstant", 0, base)],
            "a": [fold_run("a", "nnUNetTrainerRPSS", 0, a)],
            "b": [fold_run("b", "nnUNetTrainerPGPSPlus", 0, b)],
            "c": [fold_run("c", "nnUNetTrainerPGPSPerformance", 0, dict(b))],
        }
    }
    results = aggregate(runs, "constant", 0.05)
    metrics = metrics_document(results)["Task901_PGPSSynth"]
    assert metrics["a"]["dice_delta"] > 0  # the fold means say "better" ...
    assert metrics["a"]["significance"] == -1  # ... the cases say significantly worse
    raw_a = scipy_wilcoxon([a[c] for c in base], [base[c] for c in base]).pvalue
    tests = {c.run: c for c in results.comparisons}  # raw p: in the report, not in metrics.json
    assert tests["a"].test.p_raw == pytest.approx(raw_a) and raw_a < 0.03125 / 3
    assert metrics["a"]["p_holm"] == pytest.approx(3 * raw_a)
    for run in ("b", "c"):
        assert tests[run].test.p_raw == pytest.approx(0.03125)  # 14 unchanged cases dropped, 6 all better
        assert metrics[run]["p_holm"] == pytest.approx(0.0625) and metrics[run]["significance"] == 0
    assert results.family_size == 3
    assert metrics["constant"].keys() >= {"dice_mean", "dice_std", "dice_folds"} and "p_holm" not in metrics["constant"]
