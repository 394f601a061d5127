"""Instance norm that accepts a 1-voxel feature map, swapped into ONE network (no global
monkey-patch of torch). Stock ``F.instance_norm`` refuses a single spatial element in training
mode; mathematically the normalised value is 0 there (x - mean(x) = 0), so the output is the
affine bias -- exactly what the journal fork's global patch of torch computes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # the mixin only ever sits before an InstanceNorm class
    from torch.nn.modules.instancenorm import _InstanceNorm as _Base
else:
    _Base = object


class _OneVoxelSafe(_Base):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        uses_batch_stats = self.training or not self.track_running_stats  # when torch's size check fires
        if uses_batch_stats and math.prod(x.shape[2:]) == 1:
            out = torch.zeros_like(x)
            if self.affine:
                shape = (1, -1) + (1,) * (x.ndim - 2)
                out = out * self.weight.view(shape) + self.bias.view(shape)
            return out
        return super().forward(x)


class SafeInstanceNorm1d(_OneVoxelSafe, nn.InstanceNorm1d):
    pass


class SafeInstanceNorm2d(_OneVoxelSafe, nn.InstanceNorm2d):
    pass


class SafeInstanceNorm3d(_OneVoxelSafe, nn.InstanceNorm3d):
    pass


_SAFE: dict[type[nn.Module], type[nn.Module]] = {
    nn.InstanceNorm1d: SafeInstanceNorm1d,
    nn.InstanceNorm2d: SafeInstanceNorm2d,
    nn.InstanceNorm3d: SafeInstanceNorm3d,
}


def make_instance_norm_one_voxel_safe(network: nn.Module) -> int:
    """Switch every stock InstanceNorm module of ``network`` to its safe twin (same parameters,
    same state dict); returns how many were switched."""
    n = 0
    for mod in network.modules():
        safe = _SAFE.get(type(mod))
        if safe is not None:
            mod.__class__ = safe
            n += 1
    return n
