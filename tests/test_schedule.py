"""The pure curriculum: worked examples from the paper's code, properties over random plans,
and the cases where the official code crashes."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgps.schedule import MODES, ScheduleError, build_schedule, greedy_patches, round_robin_patches


def test_miccai_example_128_cubed() -> None:
    s = build_schedule((128, 128, 128), (5, 5, 5), 1000, mode="pgps")
    assert [st.patch_size for st in s.stages] == [
        (64, 32, 32), (64, 64, 32), (64, 64, 64), (96, 64, 64), (96, 96, 64),
        (96, 96, 96), (128, 96, 96), (128, 128, 96), (128, 128, 128),
    ]  # fmt: skip
    assert [st.num_epochs for st in s.stages] == [111] * 8 + [112]
    assert all(st.batch_size == 2 for st in s.stages)
    assert 0.35 <= s.voxel_fraction <= 0.39


def test_miccai_example_40_56_40() -> None:
    s = build_schedule((40, 56, 40), (3, 3, 3), 1000, mode="pgps")
    assert len(s.stages) == 14
    assert s.stages[0].patch_size == (16, 8, 8)
    assert s.stages[-1].patch_size == (40, 56, 40)
    assert s.stages[0].num_epochs == 1000 // 14


def test_journal_performance_example() -> None:
    s = build_schedule((128, 128, 128), (5, 5, 5), 1000, batch_size=2, mode="performance")
    assert len(s.stages) == 10
    assert [st.batch_size for st in s.stages] == [128, 64, 32, 16, 10, 7, 4, 3, 2, 2]
    assert s.stages[0].patch_size == (32, 32, 32)
    assert s.stages[1].patch_size == (64, 32, 32)  # greedy tie -> axis 0
    assert all(st.num_epochs == 100 for st in s.stages)


def test_journal_efficiency_keeps_plan_batch() -> None:
    s = build_schedule((128, 128, 128), (5, 5, 5), 1000, batch_size=3, mode="efficiency")
    assert len(s.stages) == sum(128 // 32 - 1 for _ in range(3)) + 1
    assert {st.batch_size for st in s.stages} == {3}


def test_pgps_plus_uses_plan_batch_not_hardcoded_two() -> None:
    s = build_schedule((128, 128, 128), (5, 5, 5), 1000, batch_size=4, mode="pgps+")
    assert s.stages[-1].batch_size == 4
    assert s.stages[0].batch_size == 4 * 128**3 // (64 * 32 * 32)


def test_constant_is_one_stage() -> None:
    s = build_schedule((32, 40, 32), (3, 3, 3), 7, mode="constant")
    assert [(st.patch_size, st.start_epoch, st.end_epoch) for st in s.stages] == [((32, 40, 32), 0, 7)]
    assert s.voxel_fraction == 1.0


def test_fewer_epochs_than_stages_does_not_crash() -> None:
    full = build_schedule((128, 128, 128), (5, 5, 5), 1000)
    for epochs in (1, 2, 3, 5, 8):
        s = build_schedule((128, 128, 128), (5, 5, 5), epochs)
        assert len(s.stages) == epochs
        assert s.stages[-1].patch_size == (128, 128, 128)
        assert all(st.num_epochs == 1 for st in s.stages)
        if epochs > 1:
            assert s.stages[0].patch_size == full.stages[0].patch_size


def test_two_d_plan() -> None:
    s = build_schedule((256, 224), (6, 5), 100)
    assert s.stages[0].patch_size == (128, 32)
    assert s.stages[-1].patch_size == (256, 224)
    assert len(s.stages) == (256 - 128) // 64 + (224 - 32) // 32 + 1


def test_axis_without_pooling_and_minimal_patch() -> None:
    s = build_schedule((4, 64, 64), (0, 3, 3), 50)
    assert s.stages[0].patch_size == (2, 8, 8)
    assert s.stages[-1].patch_size == (4, 64, 64)
    minimal = build_schedule((16, 8, 8), (3, 3, 3), 10)
    assert [st.patch_size for st in minimal.stages] == [(16, 8, 8)]


@pytest.mark.parametrize(
    ("patch", "pools", "epochs", "batch", "fragment"),
    [
        ((40, 56, 41), (3, 3, 3), 10, 2, "axis 2 = 41 is not a positive multiple of 2**3"),
        ((40, 56), (3, 3, 3), 10, 2, "one count per patch axis"),
        ((40, 56, 40), (3, 3, 3), 0, 2, "epochs must be >= 1"),
        ((40, 56, 40), (3, -1, 3), 10, 2, "poolings must be >= 0"),
        ((40, 56, 40), (3, 3, 3), 10, 0, "batch size must be >= 1"),
        ((40,), (3,), 10, 2, "2 or 3 axes"),
    ],
)
def test_invalid_plans_are_named(patch, pools, epochs, batch, fragment) -> None:
    with pytest.raises(ScheduleError, match=fragment.replace("*", r"\*")):
        build_schedule(patch, pools, epochs, batch)


def test_stage_is_a_pure_function_of_epoch() -> None:
    s = build_schedule((40, 56, 40), (3, 3, 3), 100)
    for epoch in range(100):
        st_ = s.stage_at(epoch)
        assert st_.start_epoch <= epoch < st_.end_epoch
    assert s.stage_at(150) == s.stages[-1]
    with pytest.raises(ScheduleError):
        s.stage_at(-1)


def test_rpss_draws_are_seeded_and_cover_candidates() -> None:
    s = build_schedule((40, 56, 40), (3, 3, 3), 20, mode="rpss", seed=7)
    draws = [s.rpss_patch(e, i) for e in range(20) for i in range(25)]
    assert draws == [s.rpss_patch(e, i) for e in range(20) for i in range(25)]
    assert set(draws) == set(round_robin_patches((40, 56, 40), (3, 3, 3)))
    other = build_schedule((40, 56, 40), (3, 3, 3), 20, mode="rpss", seed=8)
    assert draws != [other.rpss_patch(e, i) for e in range(20) for i in range(25)]
    assert s.stages[-1].patch_size == (40, 56, 40)


def test_stage_epochs_override() -> None:
    s = build_schedule((128, 128, 128), (5, 5, 5), 20, stage_epochs=[1, 1, 1, 1, 1, 1, 1, 1, 12])
    assert s.stages[-1].start_epoch == 8 and s.stages[-1].end_epoch == 20
    with pytest.raises(ScheduleError, match="positive counts summing to 20"):
        build_schedule((128, 128, 128), (5, 5, 5), 20, stage_epochs=[2] * 9)


# --- properties over random valid plans -------------------------------------------------------


@st.composite
def plans(draw):
    ndim = draw(st.sampled_from([2, 3]))
    pools = tuple(draw(st.integers(0, 6)) for _ in range(ndim))
    mult = tuple(draw(st.integers(1, 8)) for _ in range(ndim))
    patch = tuple((2**p) * m for p, m in zip(pools, mult))
    epochs = draw(st.integers(1, 400))
    batch = draw(st.integers(1, 16))
    return patch, pools, epochs, batch


@settings(max_examples=300, deadline=None)
@given(plans(), st.sampled_from([m for m in MODES if m != "rpss"]))
def test_schedule_properties(plan, mode) -> None:
    patch, pools, epochs, batch = plan
    s = build_schedule(patch, pools, epochs, batch, mode=mode)
    stages = s.stages
    # epochs partition [0, N)
    assert stages[0].start_epoch == 0 and stages[-1].end_epoch == epochs
    assert all(a.end_epoch == b.start_epoch for a, b in zip(stages, stages[1:]))
    assert all(st_.num_epochs >= 1 for st_ in stages)
    # ends at the planned patch, at the plan's batch
    assert stages[-1].patch_size == patch and stages[-1].batch_size == batch
    for st_ in stages:
        assert all(size % 2**p == 0 and 0 < size <= full for size, p, full in zip(st_.patch_size, pools, patch))
    for a, b in zip(stages, stages[1:]):
        assert all(x <= y for x, y in zip(a.patch_size, b.patch_size))  # non-decreasing per axis
        assert a.batch_size >= b.batch_size  # batch non-increasing
    # voxels per batch never above the baseline
    base = math.prod(patch) * batch
    assert all(st_.batch_size * math.prod(st_.patch_size) <= base for st_ in stages)
    # the unthinned curriculum grows exactly one axis per stage
    full_patches = (
        greedy_patches(patch, pools)
        if mode in ("efficiency", "performance")
        else (round_robin_patches(patch, pools) if mode != "constant" else [patch])
    )
    if epochs >= len(full_patches):
        assert [st_.patch_size for st_ in stages] == full_patches
        for a, b in zip(stages, stages[1:]):
            assert sum(x != y for x, y in zip(a.patch_size, b.patch_size)) == 1
    assert 0 < s.voxel_fraction <= 1.0


def _schedule_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`pgps schedule ARGS` in a fresh interpreter, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pgps.cli", "schedule", *args], check=False, capture_output=True, text=True
    )


def test_cli_json_and_table() -> None:
    proc = _schedule_cli(
        "--patch-size", "40", "56", "40", "--poolings", "3", "3", "3", "--epochs", "1000", "--mode", "pgps+", "--json"
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert len(data["stages"]) == 14
    assert set(data["stages"][0]) == {"patch_size", "batch_size", "start_epoch", "end_epoch"}
    assert data["stages"][-1]["batch_size"] == 2 and data["stages"][0]["batch_size"] > 2
    assert 0 < data["voxel_fraction"] <= 1
    table = _schedule_cli("--patch-size", "128", "128", "128", "--poolings", "5", "5", "5", "--epochs", "1000")
    assert table.returncode == 0, table.stderr
    assert "128x128x128" in table.stdout and "voxel fraction" in table.stdout


def test_cli_bad_plan_is_one_line_error() -> None:
    proc = _schedule_cli("--patch-size", "40", "56", "41", "--poolings", "3", "3", "3", "--epochs", "10")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "41" in proc.stderr
