"""The pure curriculum: worked examples from the paper's code, properties over random plans,
and the cases where the official code crashes."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgps.schedule import MODES, ScheduleError, build_schedule


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
    assert [st.patch_size for st in s.stages] == PGPS_40_56_40  # axis 0 full: 1 then 2 only
    assert [st.num_epochs for st in s.stages] == [71] * 13 + [77]


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


# PGPS+ (MICCAI, official plan_batch_size): walk back from the last stage, bs_k = int(|P_k+1| / |P_k| * bs_k+1),
# truncating at every step. Every expectation below is computed by hand from the patch volumes (in the comments).
def test_pgps_plus_miccai_example_128_cubed() -> None:
    s = build_schedule((128, 128, 128), (5, 5, 5), 1000, batch_size=2, mode="pgps+")
    # volumes 65536 131072 262144 393216 589824 884736 1179648 1572864 2097152; from the end: 2,
    # 2097152*2/1572864 = 2.67 -> 2, 2.67 -> 2, 2.67 -> 2, 884736*2/589824 = 3, 589824*3/393216 = 4.5 -> 4,
    # 393216*4/262144 = 6, 12, 24. (The journal's per-stage rule floor(2*|P|/|P_k|) would give 64 32 16 10 7 4 3 2 2.)
    assert [st.batch_size for st in s.stages] == [24, 12, 6, 4, 3, 2, 2, 2, 2]
    # voxels: (111 * (4*1572864 + 2*1769472 + 2359296 + 3145728) + 112 * 4194304) / (1000 * 4194304)
    assert s.voxel_fraction == 0.51784375


def test_pgps_plus_2d_plan_batch_12() -> None:
    s = build_schedule((256, 224), (6, 5), 1000, batch_size=12, mode="pgps+")
    assert [st.patch_size for st in s.stages] == [
        (128, 32), (128, 64), (192, 64), (192, 96), (256, 96), (256, 128), (256, 160), (256, 192), (256, 224),
    ]  # fmt: skip
    # volumes 4096 8192 12288 18432 24576 32768 40960 49152 57344; from the end: 12, 57344*12/49152 = 14,
    # 49152*14/40960 = 16.8 -> 16, 20, 26.7 -> 26, 34.7 -> 34, 51, 76.5 -> 76, 152 (the walk starts at 12, not 2)
    assert [st.batch_size for st in s.stages] == [152, 76, 51, 34, 26, 20, 16, 14, 12]


def test_pgps_plus_anisotropic_plan() -> None:
    s = build_schedule((16, 40, 40), (2, 3, 3), 1000, batch_size=2, mode="pgps+")
    assert [st.patch_size for st in s.stages] == [
        (8, 8, 8), (8, 16, 8), (8, 16, 16), (12, 16, 16), (12, 24, 16), (12, 24, 24),
        (16, 24, 24), (16, 32, 24), (16, 32, 32), (16, 40, 32), (16, 40, 40),
    ]  # fmt: skip
    # volumes 512 1024 2048 3072 4608 6912 9216 12288 16384 20480 25600: 2 while the ratio * 2 < 3, then
    # 6912*2/4608 = 3, 4608*3/3072 = 4.5 -> 4, 6, 12, 24
    assert [st.batch_size for st in s.stages] == [24, 12, 6, 4, 3, 2, 2, 2, 2, 2, 2]
    assert s.voxel_fraction == 0.4402  # (90 * 193536 + 100 * 51200) / (1000 * 51200)


def test_pgps_plus_plan_batch_three() -> None:
    s = build_schedule((128, 128, 128), (5, 5, 5), 1000, batch_size=3, mode="pgps+")
    # from the end: 3, 4, 5.33 -> 5, 6.67 -> 6, 9, 13.5 -> 13, 19.5 -> 19, 38, 76
    assert [st.batch_size for st in s.stages] == [76, 38, 19, 13, 9, 6, 5, 4, 3]


def test_pgps_plus_thinned_run_keeps_the_full_curriculums_batches() -> None:
    s = build_schedule((128, 128, 128), (5, 5, 5), 5, batch_size=2, mode="pgps+")
    # 5 of 9 stages kept (0, 2, 4, 6, 8) with the batches they have in the full curriculum (a walk over the
    # kept stages alone would give 52 13 6 3 2)
    assert [(st.patch_size, st.batch_size) for st in s.stages] == [
        ((64, 32, 32), 24), ((64, 64, 64), 6), ((96, 96, 64), 3), ((128, 96, 96), 2), ((128, 128, 128), 2),
    ]  # fmt: skip
    assert s.voxel_fraction == 0.546875  # (1572864 + 1572864 + 1769472 + 2359296 + 4194304) / (5 * 4194304)
    chosen = build_schedule(
        (128, 128, 128), (5, 5, 5), 6, batch_size=2, mode="pgps+", stage_epochs=[1, 2, 3], stage_indices=[0, 4, 8]
    )
    assert [(st.patch_size, st.batch_size) for st in chosen.stages] == [
        ((64, 32, 32), 24), ((96, 96, 64), 3), ((128, 128, 128), 2),
    ]  # fmt: skip


def test_constant_is_one_stage() -> None:
    s = build_schedule((32, 40, 32), (3, 3, 3), 7, mode="constant")
    assert [(st.patch_size, st.start_epoch, st.end_epoch) for st in s.stages] == [((32, 40, 32), 0, 7)]
    assert s.voxel_fraction == 1.0


def test_fewer_epochs_than_stages_does_not_crash() -> None:
    for epochs in (1, 2, 3, 5, 8):
        s = build_schedule((128, 128, 128), (5, 5, 5), epochs)
        assert len(s.stages) == epochs
        assert s.stages[-1].patch_size == (128, 128, 128)
        assert all(st.num_epochs == 1 for st in s.stages)
        if epochs > 1:
            assert s.stages[0].patch_size == (64, 32, 32)
    # first, last and evenly spaced ones between: round(i * 8 / 2) of the 9 stages = 0, 4, 8
    three = build_schedule((128, 128, 128), (5, 5, 5), 3)
    assert [st.patch_size for st in three.stages] == [(64, 32, 32), (96, 96, 64), (128, 128, 128)]


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


PGPS_40_56_40 = [
    (16, 8, 8), (16, 16, 8), (16, 16, 16), (24, 16, 16), (24, 24, 16), (24, 24, 24), (32, 24, 24),
    (32, 32, 24), (32, 32, 32), (40, 32, 32), (40, 40, 32), (40, 40, 40), (40, 48, 40), (40, 56, 40),
]  # fmt: skip


def _blake2b_draw(seed: int, epoch: int, iteration: int, n: int) -> int:
    """The documented draw: blake2b-64 of "seed:epoch:iteration", little endian, modulo the candidates."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{iteration}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n


def test_rpss_draws_are_seeded_and_cover_candidates() -> None:
    s = build_schedule((40, 56, 40), (3, 3, 3), 20, mode="rpss", seed=7)
    assert list(s.candidates) == PGPS_40_56_40
    draws = [s.rpss_patch(e, i) for e in range(20) for i in range(25)]
    # a pure function of (seed, epoch, iteration), independent of the process (a resume draws the same)
    assert draws == [PGPS_40_56_40[_blake2b_draw(7, e, i, 14)] for e in range(20) for i in range(25)]
    assert set(draws) == set(PGPS_40_56_40)
    other = build_schedule((40, 56, 40), (3, 3, 3), 20, mode="rpss", seed=8)
    assert draws != [other.rpss_patch(e, i) for e in range(20) for i in range(25)]
    assert [(st.patch_size, st.batch_size) for st in s.stages] == [((40, 56, 40), 2)]  # batch constant


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


def _expected_stage_count(patch: tuple[int, ...], pools: tuple[int, ...], mode: str) -> int:
    """n = sum_d ceil((P_d - m_d) / s_d) + 1 with the mode's start patch m (the paper's formula)."""
    steps = [2**p for p in pools]
    if mode == "constant":
        return 1
    if mode in ("efficiency", "performance"):
        start = [min(s, p) for s, p in zip(steps, patch)]
    else:
        start = [min(2 * steps[0], patch[0]), *steps[1:]]
    return sum(math.ceil((p - m) / s) for p, m, s in zip(patch, start, steps)) + 1


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
    vox = [st_.batch_size * math.prod(st_.patch_size) for st_ in stages]
    assert all(v <= base for v in vox)
    n = _expected_stage_count(patch, pools, mode)
    assert len(stages) == min(n, epochs)
    if epochs >= n:  # the unthinned curriculum grows exactly one axis per stage, by 2**p (clamped)
        for a, b in zip(stages, stages[1:]):
            (axis,) = [d for d in range(len(patch)) if a.patch_size[d] != b.patch_size[d]]
            assert b.patch_size[axis] == min(a.patch_size[axis] + 2 ** pools[axis], patch[axis])
        if mode == "pgps+":  # each batch the largest whose voxels stay within the next stage's
            for a, b in zip(stages, stages[1:]):
                size = math.prod(a.patch_size)
                assert a.batch_size * size <= b.batch_size * math.prod(b.patch_size) < (a.batch_size + 1) * size
        if mode == "performance":  # each batch the largest whose voxels stay within the baseline's
            for st_ in stages[:-1]:
                size = math.prod(st_.patch_size)
                assert st_.batch_size * size <= base < (st_.batch_size + 1) * size
    if mode == "pgps+":
        assert vox == sorted(vox)  # voxels per batch rise over training (thinned runs too)
    elif mode != "performance":
        assert {st_.batch_size for st_ in stages} == {batch}
    assert 0 < s.voxel_fraction <= 1.0


def _schedule_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`pgps schedule ARGS` in a fresh interpreter, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pgps.cli", "schedule", *args], check=False, capture_output=True, text=True
    )


def test_cli_json_and_table() -> None:
    proc = _schedule_cli(
        "--patch-size", "128", "128", "128", "--poolings", "5", "5", "5",
        "--epochs", "1000", "--mode", "pgps+", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data["stages"][0]) == {"patch_size", "batch_size", "start_epoch", "end_epoch"}
    assert [st_["batch_size"] for st_ in data["stages"]] == [24, 12, 6, 4, 3, 2, 2, 2, 2]
    assert data["voxel_fraction"] == 0.51784375
    table = _schedule_cli("--patch-size", "128", "128", "128", "--poolings", "5", "5", "5", "--epochs", "1000")
    assert table.returncode == 0, table.stderr
    assert "128x128x128" in table.stdout and "voxel fraction" in table.stdout


def test_cli_bad_plan_is_one_line_error() -> None:
    proc = _schedule_cli("--patch-size", "40", "56", "41", "--poolings", "3", "3", "3", "--epochs", "10")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "41" in proc.stderr
