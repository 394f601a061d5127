"""The input shapes the network really receives, counted by a forward pre-hook and split by
train/eval mode: the run record's proof that a stage trained at its patch and batch and that
validation ran at the planned patch."""

from __future__ import annotations

from typing import Any

from torch.utils.hooks import RemovableHandle


class ShapeTally:
    """Forward pre-hook: counts the input shapes the network receives, split by train/eval mode."""

    def __init__(self) -> None:
        self.train: dict[tuple[int, ...], int] = {}
        self.val: dict[tuple[int, ...], int] = {}
        self._handle: RemovableHandle | None = None

    def __call__(self, module: Any, args: tuple) -> None:
        if not args or not hasattr(args[0], "shape"):
            return
        bucket = self.train if module.training else self.val
        shape = tuple(int(x) for x in args[0].shape)
        bucket[shape] = bucket.get(shape, 0) + 1

    def attach(self, module: Any) -> None:
        self.detach()
        self._handle = module.register_forward_pre_hook(self)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def reset(self) -> None:
        self.train, self.val = {}, {}

    @staticmethod
    def as_list(bucket: dict[tuple[int, ...], int]) -> list[dict]:
        return [{"shape": list(s), "count": n} for s, n in bucket.items()]
