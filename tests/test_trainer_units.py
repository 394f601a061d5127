"""Fast checks of the trainer layer's pure parts (no training): knobs, plan geometry, DDP
split, the 1-voxel-safe instance norm. Runtime: ~2 s."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from pgps.errors import PGPSError
from pgps.nnunet.geometry import poolings_from_strides, rank_batch_sizes, rank_oversample
from pgps.nnunet.knobs import read_knobs
from pgps.nnunet.norm import make_instance_norm_one_voxel_safe


def test_knob_defaults() -> None:
    k = read_knobs({})
    assert (k.num_epochs, k.iters_per_epoch, k.val_iters, k.seed) == (1000, 250, 50, 0)
    assert (k.codecarbon, k.dry_run, k.save_every) == ("off", "auto", 1)


def test_knobs_parse_values() -> None:
    k = read_knobs({"PGPS_NUM_EPOCHS": "7", "PGPS_CODECARBON": "deu", "PGPS_DRY_RUN": "ON", "PGPS_SEED": "3"})
    assert (k.num_epochs, k.codecarbon, k.dry_run, k.seed) == (7, "DEU", "on", 3)


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("PGPS_NUM_EPOCHS", "0", "PGPS_NUM_EPOCHS='0': the number of epochs must be an integer >= 1"),
        ("PGPS_NUM_EPOCHS", "ten", "PGPS_NUM_EPOCHS='ten'"),
        ("PGPS_ITERS_PER_EPOCH", "-3", "PGPS_ITERS_PER_EPOCH='-3'"),
        ("PGPS_VAL_ITERS", "1.5", "PGPS_VAL_ITERS='1.5'"),
        ("PGPS_SEED", "-1", "PGPS_SEED='-1': the seed must be an integer >= 0"),
        ("PGPS_CODECARBON", "Germany", "PGPS_CODECARBON='Germany': use 'off' or a 3-letter ISO country code"),
        ("PGPS_DRY_RUN", "maybe", "PGPS_DRY_RUN='maybe': use on, off or auto"),
        ("PGPS_SAVE_EVERY", "0", "PGPS_SAVE_EVERY='0'"),
    ],
)
def test_bad_knob_is_one_clear_error(name: str, value: str, needle: str) -> None:
    with pytest.raises(PGPSError) as err:
        read_knobs({name: value})
    assert needle in str(err.value)


def test_poolings_counted_from_strides() -> None:
    # default 3d_fullres plan of a 48x80x64 task and an anisotropic one
    assert poolings_from_strides([[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]], 3) == (3, 4, 4)
    assert poolings_from_strides([[1, 1, 1], [1, 2, 2], [2, 2, 2]], 3) == (1, 2, 2)
    # ResEnc / older plans may store an int per stage
    assert poolings_from_strides([1, 2, 2, 2], 2) == (3, 3)


def test_strides_other_than_1_or_2_are_refused() -> None:
    with pytest.raises(PGPSError, match="stride 3 on axis 1 of stage 1"):
        poolings_from_strides([[1, 1], [2, 3]], 2, "plans.json")
    with pytest.raises(PGPSError, match="does not have 3 axes"):
        poolings_from_strides([[1, 1]], 3)


def test_rank_batch_split_examples() -> None:
    assert rank_batch_sizes(2, 1) == [2]
    assert rank_batch_sizes(5, 2) == [3, 2]
    assert rank_batch_sizes(128, 3) == [43, 43, 42]
    with pytest.raises(PGPSError, match="smaller than the number of GPUs"):
        rank_batch_sizes(2, 4)


@given(st.integers(1, 300), st.integers(1, 8))
def test_rank_batch_split_properties(batch: int, world: int) -> None:
    if batch < world:
        return
    sizes = rank_batch_sizes(batch, world)
    assert sum(sizes) == batch and len(sizes) == world
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def _forced_per_rank(batch: int, world: int, share: float) -> list[int]:
    """nnU-Net's rule, computed here from its description: the global batch's samples ``i >=
    round(batch * (1 - share))`` are foreground-forced; rank r holds the next ``batch // world`` (+1 for
    the first ``batch % world`` ranks) samples."""
    sizes = [batch // world + (1 if r < batch % world else 0) for r in range(world)]
    threshold = round(batch * (1 - share))
    out, low = [], 0
    for size in sizes:
        out.append(sum(1 for i in range(low, low + size) if i >= threshold))
        low += size
    return out


@given(st.integers(1, 64), st.integers(1, 8), st.sampled_from([0.0, 0.33, 0.5, 0.9, 1.0]))
def test_rank_oversample_forces_exactly_each_ranks_samples(batch: int, world: int, share: float) -> None:
    """Each rank's share, turned into samples the way nnUNetDataLoader does (``not i < round(size *
    (1 - share))``), forces exactly that rank's samples of the global batch."""
    if batch < world:
        return
    sizes = rank_batch_sizes(batch, world)
    loader_forced = [size - round(size * (1 - rank_oversample(batch, world, r, share))) for r, size in enumerate(sizes)]
    assert loader_forced == _forced_per_rank(batch, world, share)


def test_rank_oversample_examples() -> None:
    # batch 2 on 2 GPUs at 0.33: round(2 * 0.67) = 1 random sample (rank 0), one forced (rank 1)
    assert [rank_oversample(2, 2, r, 0.33) for r in range(2)] == [0.0, 1.0]
    # batch 5 on 2 GPUs at 0.5: samples 0-2 on rank 0, 3-4 on rank 1; round(2.5) = 2, so 2, 3, 4 are forced
    assert [rank_oversample(5, 2, r, 0.5) for r in range(2)] == [pytest.approx(1 / 3), 1.0]


def test_stock_instance_norm_fails_on_one_voxel_safe_twin_does_not() -> None:
    x = torch.randn(2, 4, 1, 1, 1, requires_grad=True)
    stock = nn.InstanceNorm3d(4, affine=True)
    with torch.no_grad():
        stock.bias.copy_(torch.arange(4.0))
    stock.train()
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        stock(x)
    net = nn.Sequential(nn.Conv3d(4, 4, 1), stock)
    assert make_instance_norm_one_voxel_safe(net) == 1
    out = net[1](x)
    assert torch.equal(out, torch.arange(4.0).view(1, 4, 1, 1, 1).expand(2, 4, 1, 1, 1))
    out.sum().backward()  # trainable: the bias gets a gradient
    assert torch.equal(net[1].bias.grad, torch.full((4,), 2.0))
    # bigger maps: identical to stock instance norm
    y = torch.randn(2, 4, 3, 2, 2)
    ref = nn.InstanceNorm3d(4, affine=True)
    ref.load_state_dict(net[1].state_dict())
    assert torch.allclose(net[1](y), ref(y))
