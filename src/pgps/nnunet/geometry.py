"""Plan geometry the schedule needs, read from the plan whatever the network class
(PlainConvUNet, ResEnc ...): poolings per axis, and the DDP split of a stage batch."""

from __future__ import annotations

from collections.abc import Sequence

from pgps.errors import PGPSError


def poolings_from_strides(strides: Sequence[int | Sequence[int]], ndim: int, source: str = "plans") -> tuple[int, ...]:
    """Count the stride-2 entries per axis in ``architecture.arch_kwargs.strides``
    (nnU-Net >= 2.3 no longer stores ``num_pool_per_axis``)."""
    counts = [0] * ndim
    for stage, s in enumerate(strides):
        per_axis = [int(s)] * ndim if isinstance(s, int) else [int(x) for x in s]
        if len(per_axis) != ndim:
            raise PGPSError(f"{source}: stride {list(per_axis)} of stage {stage} does not have {ndim} axes")
        for axis, v in enumerate(per_axis):
            if v == 2:
                counts[axis] += 1
            elif v != 1:
                raise PGPSError(
                    f"{source}: stride {v} on axis {axis} of stage {stage}; PGPS grows patches in steps of "
                    "2**poolings and supports strides 1 and 2 only"
                )
    return tuple(counts)


def rank_batch_sizes(global_batch: int, world_size: int) -> list[int]:
    """Per-rank batch sizes for a global batch, split the way nnU-Net 2.8 splits the planned
    batch in ``_set_batch_size_and_oversample``: equal shares, the first ranks take one extra."""
    if world_size < 1:
        raise PGPSError(f"world size must be >= 1, got {world_size}")
    if global_batch < world_size:
        raise PGPSError(
            f"batch size {global_batch} is smaller than the number of GPUs {world_size}: DDP cannot split it"
        )
    base = global_batch // world_size
    return [base + 1 if base * world_size + rank < global_batch else base for rank in range(world_size)]


def rank_oversample(global_batch: int, world_size: int, rank: int, oversample: float) -> float:
    """Foreground-oversampling share of one rank, so that over all ranks the LAST
    ``oversample`` part of the global batch is foreground-forced (nnU-Net's rule)."""
    sizes = rank_batch_sizes(global_batch, world_size)
    low, high = sum(sizes[:rank]), sum(sizes[: rank + 1])
    if high / global_batch < 1 - oversample:
        return 0.0
    if low / global_batch > 1 - oversample:
        return 1.0
    forced = [not i < round(global_batch * (1 - oversample)) for i in range(global_batch)]
    return sum(forced[low:high]) / sizes[rank]
