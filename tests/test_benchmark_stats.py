"""The benchmark's own arithmetic (benchmarks/stats.py) and loader timing (benchmarks/instrument.py)
on hand-made numbers; no training (the trainings run in `make bench`). ~1 s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from benchmarks.instrument import _timed_class
from benchmarks.stats import (
    aggregate,
    check_targets,
    per_stage,
    projected_seconds,
    projected_validation_seconds,
    spread,
    stage_switches,
    summarize_run,
    time_by_phase,
)

from pgps.errors import PGPSError


def _it(epoch: int, shape: list[int], t: float, wait: float, step: float) -> dict:
    """An iteration whose loader wait starts at t, followed by its step."""
    return {
        "epoch": epoch,
        "shape": shape,
        "next_t0": t,
        "next_t1": t + wait,
        "step_t0": t + wait,
        "step_t1": t + wait + step,
        "step_cpu": 2 * step,
    }


def _two_stage_raw() -> dict:
    """Epoch 0: 3 iterations at 16x16x16 (1 s steps, first 3 s); epoch 1 switches to 32^3
    (2 s steps, first one 5 s: 3 s of warm-up), its first batch waits 0.5 s instead of 0.1 s."""
    small, big = [2, 1, 16, 16, 16], [2, 1, 32, 32, 32]
    its = [_it(0, small, 0.0, 0.1, 3.0), _it(0, small, 3.1, 0.1, 1.0), _it(0, small, 4.2, 0.1, 1.0)]
    # epoch 0 ends at 5.3; validation + checkpoint until 7.0; rebuild 7.0 -> 7.25
    its += [_it(1, big, 7.25, 0.5, 5.0), _it(1, big, 12.75, 0.1, 2.0), _it(1, big, 14.85, 0.1, 2.0)]
    return {
        "trainer": "T",
        "planned_patch": [32, 32, 32],
        "planned_batch": 2,
        "training_s": 20.0,
        "iterations": its,
        "hooks": [
            {"hook": "on_train_epoch_start", "epoch": 0, "t0": -0.2, "t1": 0.0},
            {"hook": "on_train_epoch_start", "epoch": 1, "t0": 7.0, "t1": 7.25},
        ],
        "loaders": [{"epoch": 0, "t": -0.1}, {"epoch": 1, "t": 7.2}],
        "schedule": {"voxel_fraction": 0.5},
        "dice_foreground_mean": 0.8,
    }


def test_spread_ignores_missing_values() -> None:
    assert spread([3.0, None, 1.0, float("nan"), 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert spread([None])["median"] is None


def test_per_stage_groups_by_batch_and_patch_in_order_of_appearance() -> None:
    rows = per_stage(_two_stage_raw()["iterations"], [32, 32, 32], 2)
    assert [r["patch_size"] for r in rows] == [[16, 16, 16], [32, 32, 32]]
    assert rows[0]["voxel_fraction"] == pytest.approx(1 / 8)
    assert rows[0]["step_s"] == pytest.approx(1.0)  # median of 3, 1, 1
    assert rows[0]["first_step_s"] == pytest.approx(3.0)
    assert rows[1]["s_per_iter"] == pytest.approx(2.1)  # median of 5.5, 2.1, 2.1
    assert rows[1]["step_cpu_s"] == pytest.approx(4.0)


def test_stage_switch_cost_is_rebuild_plus_first_batch_and_step_extras() -> None:
    (sw,) = stage_switches(_two_stage_raw())
    assert sw["epoch"] == 1
    assert sw["from"]["patch_size"] == [16, 16, 16] and sw["to"]["patch_size"] == [32, 32, 32]
    assert sw["rebuild_s"] == pytest.approx(0.25)
    assert sw["first_wait_extra_s"] == pytest.approx(0.4)
    assert sw["first_step_extra_s"] == pytest.approx(3.0)
    assert sw["cost_s"] == pytest.approx(3.65)
    assert sw["gap_s"] == pytest.approx(7.75 - 5.3)  # last step of epoch 0 -> first step of epoch 1


def test_epoch_zero_loader_build_is_not_a_switch() -> None:
    raw = _two_stage_raw()
    raw["loaders"] = [{"epoch": 0, "t": -0.1}]
    assert stage_switches(raw) == []


def test_summarize_run_loop_time_waits_and_realized_voxel_fraction() -> None:
    s = summarize_run(_two_stage_raw())
    assert s["train_loop_s"] == pytest.approx(3.1 + 1.1 + 1.1 + 5.5 + 2.1 + 2.1)
    assert s["outside_loop_s"] == pytest.approx(20.0 - s["train_loop_s"])
    assert s["wait_per_iter_s"] == pytest.approx(0.1)
    assert s["voxel_fraction_realized"] == pytest.approx((3 * 1 / 8 + 3 * 1.0) / 6)
    assert s["switch_fraction"] == pytest.approx(3.65 / 20.0)


def _summary(trainer: str, rep: int, training_s: float, dice: float, vf: float | None = None) -> dict:
    return {
        "trainer": trainer,
        "rep": rep,
        "training_s": training_s,
        "train_loop_s": training_s / 2,
        "outside_loop_s": training_s / 2,
        "training_cpu_s": 2 * training_s,
        "process_s": training_s + 10,
        "dice": dice,
        "voxel_fraction_schedule": vf,
        "voxel_fraction_realized": vf or 1.0,
        "switches": [],
        "switch_total_s": 0.1,
        "switch_rebuild_s": 0.05,
        "switch_fraction": 0.1 / training_s,
        "wait_per_iter_s": 0.01,
        "peak_rss_training_mib": 1000.0,
        "cuda_max_allocated_mib": None,
        "stages": [
            {
                "patch_size": [8, 8, 8],
                "batch_size": 2,
                "voxel_fraction": vf or 1.0,
                "s_per_iter": 1.0,
                "step_s": 0.9,
                "step_cpu_s": 1.8,
                "wait_s": 0.1,
            }
        ],
    }


def test_ratios_are_paired_within_a_repetition() -> None:
    # rep 1 ran on a slower (busier) machine for both: pairing cancels it, pooling would not
    runs = [
        _summary("base", 0, 100.0, 0.80),
        _summary("pgps", 0, 40.0, 0.81, 0.38),
        _summary("base", 1, 200.0, 0.82),
        _summary("pgps", 1, 84.0, 0.80, 0.38),
        _summary("base", 2, 110.0, 0.78),
        _summary("pgps", 2, 44.0, 0.79, 0.38),
    ]
    agg = aggregate(runs, "base")
    wall = agg["pgps"]["ratio"]["wall"]
    assert wall == {"median": pytest.approx(0.4), "min": pytest.approx(0.4), "max": pytest.approx(0.42), "n": 3}
    assert agg["base"]["ratio"]["wall"]["median"] == pytest.approx(1.0)
    assert agg["pgps"]["ratio"]["process"]["median"] == pytest.approx(54 / 120)  # of 50/110, 94/210, 54/120
    assert agg["pgps"]["dice_minus_baseline"]["median"] == pytest.approx(0.01)
    assert agg["pgps"]["voxel_fraction"] == 0.38


def test_targets_met_and_missed() -> None:
    runs = [_summary("base", 0, 100.0, 0.80), _summary("pgps", 0, 44.0, 0.795, 0.38)]
    t = check_targets(aggregate(runs, "base"), "base", "pgps")
    assert t["wall_ratio"]["limit"] == pytest.approx(0.43)
    assert t["wall_ratio"]["met"] is False  # 0.44 > 0.38 + 0.05
    assert t["dice"]["met"] is True  # 0.795 >= 0.80 - 0.01
    assert t["switch_fraction"]["met"] is True  # 0.1 s of 44 s
    assert t["wall_ratio_projected"]["met"] is None  # no projection in these runs: not judged
    runs[0]["projected_s"], runs[1]["projected_s"] = 1000.0, 410.0
    t = check_targets(aggregate(runs, "base"), "base", "pgps")
    assert t["wall_ratio_projected"]["value"] == pytest.approx(0.41) and t["wall_ratio_projected"]["met"] is True
    assert t["switch_fraction_projected"]["value"] == pytest.approx(0.1 / 410.0)
    assert t["wall_ratio_projected_vs_validation_adjusted_limit"]["met"] is None  # validation share unknown
    runs[0]["projected_validation_s"] = 100.0  # a tenth of the baseline is validation at the full patch
    t = check_targets(aggregate(runs, "base"), "base", "pgps")
    adjusted = t["wall_ratio_projected_vs_validation_adjusted_limit"]
    assert adjusted["limit"] == pytest.approx(0.38 * 0.9 + 0.1 + 0.05) and adjusted["met"] is True
    runs[1]["dice"] = 0.78
    assert check_targets(aggregate(runs, "base"), "base", "pgps")["dice"]["met"] is False


class _Counter:
    """A batchgenerators-style data loader: an endless iterator of numbered batches."""

    def __init__(self) -> None:
        self.n = 0

    def __iter__(self) -> _Counter:
        return self

    def __next__(self) -> dict:
        self.n += 1
        return {"data": self.n}


def test_timed_loader_keeps_its_class_and_reports_each_wait() -> None:
    loader = SingleThreadedAugmenter(_Counter(), None)
    waits: list[tuple[float, float]] = []
    loader.__class__ = _timed_class(SingleThreadedAugmenter)
    loader._bench_sink = lambda t0, t1: waits.append((t0, t1))
    assert [next(loader)["data"] for _ in range(3)] == [1, 2, 3]
    assert isinstance(loader, SingleThreadedAugmenter)
    assert len(waits) == 3 and all(t1 >= t0 for t0, t1 in waits)
    assert _timed_class(SingleThreadedAugmenter) is type(loader)  # one subclass per loader class


def test_time_by_phase_splits_training_time() -> None:
    raw = _two_stage_raw()
    raw["hooks"] += [
        {"hook": "on_validation_epoch_start", "epoch": 0, "t0": 5.3, "t1": 5.35},
        {"hook": "on_validation_epoch_end", "epoch": 0, "t0": 6.0, "t1": 6.1},
        {"hook": "on_epoch_end", "epoch": 0, "t0": 6.1, "t1": 6.9},
        {"hook": "on_validation_epoch_start", "epoch": 1, "t0": 16.95, "t1": 17.0},
        {"hook": "on_validation_epoch_end", "epoch": 1, "t0": 17.5, "t1": 17.6},
        {"hook": "on_epoch_end", "epoch": 1, "t0": 17.6, "t1": 19.0},
    ]
    phases = time_by_phase(raw)
    assert phases["step_s"] == pytest.approx(3 + 1 + 1 + 5 + 2 + 2)
    assert phases["wait_s"] == pytest.approx(0.1 * 3 + 0.5 + 0.1 + 0.1)
    assert phases["validation_s"] == pytest.approx(0.8 + 0.65)
    assert phases["epoch_end_s"] == pytest.approx(0.8 + 1.4)
    assert phases["epoch_start_s"] == pytest.approx(0.2 + 0.25)
    assert sum(phases.values()) == pytest.approx(raw["training_s"])
    assert summarize_run(raw)["validation_s"] == pytest.approx(1.45)


PLAN_32 = {"planned_patch_size": [32, 32, 32], "planned_batch_size": 2, "poolings": [3, 3, 3]}


def _with_phases(raw: dict) -> dict:
    raw["hooks"] += [
        {"hook": "on_validation_epoch_start", "epoch": 0, "t0": 5.3, "t1": 5.35},
        {"hook": "on_validation_epoch_end", "epoch": 0, "t0": 6.0, "t1": 6.1},
        {"hook": "on_validation_epoch_start", "epoch": 1, "t0": 16.95, "t1": 17.0},
        {"hook": "on_validation_epoch_end", "epoch": 1, "t0": 17.5, "t1": 17.6},
    ]
    return raw


def test_projection_puts_measured_costs_onto_nnunet_protocol() -> None:
    raw = _with_phases(_two_stage_raw())
    raw["schedule"] = {**PLAN_32, "mode": "constant"}
    phases = time_by_phase(raw)
    val = phases["validation_s"] / 2 * 50 / 2  # measured with 2 validation iterations per epoch
    fixed = (phases["epoch_end_s"] + phases["epoch_start_s"] + phases["other_s"]) / 2
    # one stage at 32^3: 2.1 s per iteration (median of 5.5, 2.1, 2.1), 4 epochs of 250 iterations
    assert projected_seconds(raw, val_iters=2, epochs=4) == pytest.approx(4 * (250 * 2.1 + val + fixed))
    assert projected_validation_seconds(raw, val_iters=2, epochs=4) == pytest.approx(4 * val)


def test_projection_refuses_what_it_did_not_measure() -> None:
    raw = _with_phases(_two_stage_raw())
    raw["schedule"] = {**PLAN_32, "mode": "pgps"}
    assert projected_seconds(raw, val_iters=2) is None  # 9 PGPS stages, only 2 shapes measured
    raw["schedule"] = {**raw["schedule"], "mode": "rpss", "candidates": [[16, 16, 16], [32, 32, 32]]}
    assert projected_seconds(raw, val_iters=2) is None  # a patch per iteration: no per-stage epochs


def test_reanalyse_loads_complete_repetitions_only(tmp_path: Path) -> None:
    from benchmarks.run_benchmark import load_raws

    for rep, trainer in [(0, "A"), (0, "B"), (1, "A")]:  # repetition 1 was interrupted before B
        (tmp_path / f"rep{rep}" / trainer).mkdir(parents=True)
        (tmp_path / f"rep{rep}" / trainer / "raw.json").write_text(json.dumps({"trainer": trainer}))
    raws = load_raws(tmp_path, ["A", "B"])
    assert [(r["rep"], r["trainer"]) for r in raws] == [(0, "A"), (0, "B")]
    with pytest.raises(PGPSError, match="no repetition with a raw.json for every one of A, C"):
        load_raws(tmp_path, ["A", "C"])
    (tmp_path / "rep0" / "B" / "raw.json").write_text("{truncated")
    with pytest.raises(PGPSError, match=r"rep0/B/raw.json: not valid JSON"):
        load_raws(tmp_path, ["A", "B"])
