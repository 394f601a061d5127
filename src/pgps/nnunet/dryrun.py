"""Memory safety: one real training step at the largest tensor the curriculum will ever use,
before the curriculum starts, so an out-of-memory shows in the first seconds and not when the
patch reaches full size days later (Composer's / fastxtend's warm-up idea). Weights, optimizer,
grad scaler and RNG states are restored, so the run starts from exactly the state it would have
started from without the dry run."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from pgps.errors import PGPSError


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    from torch.nn.parallel import DistributedDataParallel

    mod = network.module if isinstance(network, DistributedDataParallel) else network
    return getattr(mod, "_orig_mod", mod)


def synthetic_batch(trainer: Any, patch: Sequence[int], batch: int) -> dict:
    """A batch of the shapes (and dtypes) the loader would deliver, incl. deep-supervision targets."""
    gen = torch.Generator().manual_seed(0)
    data = torch.randn((batch, trainer.num_input_channels, *patch), generator=gen)
    lm = trainer.label_manager
    channels = len(lm.foreground_regions) if lm.has_regions else 1
    scales = trainer._get_deep_supervision_scales() if trainer.enable_deep_supervision else None

    def target(shape: Sequence[int]) -> torch.Tensor:
        if lm.has_regions:
            return torch.zeros((batch, channels, *shape), dtype=torch.int16)
        return torch.randint(0, len(lm.all_labels), (batch, 1, *shape), generator=gen, dtype=torch.int16)

    if scales is None:
        return {"data": data, "target": target(patch)}
    targets = [target([round(p * s) for p, s in zip(patch, sc)]) for sc in scales]
    return {"data": data, "target": targets}


@contextmanager
def restored_state(trainer: Any) -> Iterator[None]:
    """Weights, optimizer, grad scaler, RNG and train/eval mode as they were on entry, whatever
    ran inside (dry run, timed warm-up)."""
    net = unwrap(trainer.network)
    weights = copy.deepcopy(net.state_dict())
    optim = copy.deepcopy(trainer.optimizer.state_dict())
    scaler = copy.deepcopy(trainer.grad_scaler.state_dict()) if trainer.grad_scaler is not None else None
    rng_cpu = torch.get_rng_state()
    rng_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = trainer.network.training
    try:
        yield
    finally:
        net.load_state_dict(weights)
        trainer.optimizer.load_state_dict(optim)
        trainer.optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            trainer.grad_scaler.load_state_dict(scaler)
        torch.set_rng_state(rng_cpu)
        if rng_cuda is not None:
            torch.cuda.set_rng_state_all(rng_cuda)
        trainer.network.train(was_training)


def dry_run(trainer: Any, patch: Sequence[int], batch: int) -> float:
    """One ``train_step`` at (patch, batch) with every state restored; returns seconds taken."""
    t0 = time.perf_counter()
    with restored_state(trainer):
        try:
            trainer.network.train()
            trainer.train_step(synthetic_batch(trainer, patch, batch))
            if trainer.device.type == "cuda":
                torch.cuda.synchronize(trainer.device)
        except torch.OutOfMemoryError:
            raise PGPSError(
                f"dry run: one training step at patch {list(patch)} x batch {batch} ran out of memory on "
                f"{trainer.device}; the curriculum would crash when it reaches this size. Use a smaller plan "
                "(patch or batch) or a larger GPU; PGPS_DRY_RUN=off skips this check."
            ) from None
    return time.perf_counter() - t0
