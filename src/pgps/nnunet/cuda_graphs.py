"""One CUDA graph per stage shape for nnU-Net's training step (issue 17.2, knob
``PGPS_CUDA_GRAPHS=on``).

Why: at batch 2 the small PGPS stages are launch-bound on an H200 (64x32x32 takes 24 ms per step
for 3 % of the voxels of a 67 ms 128^3 step; torch.compile's default mode did not help there,
25.7 ms), so the curriculum's network time is 0.578 of constant patch against a voxel fraction of
0.381. A stage has ONE static shape for thousands of steps, which is exactly what a CUDA graph
needs: capture the whole step once, then replay it with one launch.

Why explicit whole-step capture (``torch.cuda.graph`` with static buffers) and not
``torch.compile(mode="reduce-overhead")``: reduce-overhead graphs only the compiled network's
forward and backward; nnU-Net's DC+CE deep-supervision loss, gradient clipping, the grad scaler
and the optimizer stay eager kernel by kernel (the measured overhead at 64x32x32 survived
compilation); it exists only with compile on; and its cudagraph trees re-record per shape under
dynamo's recompile limits. Capturing forward + loss + backward + unscale + clip + SGD + scaler
update removes all per-step host work. What that needs (checked in torch 2.14's sources):

- SGD: no ``capturable`` flag exists for it; the foreach path turns a tensor lr into a Python
  scalar (``_to_scalar``: a sync, and the value is baked into a graph). The FUSED path takes a
  tensor lr (``_fused_sgd_.tensor_lr``) and sets ``_step_supports_amp_scaling``, so
  ``GradScaler.step`` hands it ``found_inf`` instead of syncing on it (``_maybe_opt_step`` calls
  ``.item()``). So param groups are switched to ``fused=True`` and, during capture only, ``lr`` is
  a device tensor that is refilled from nnU-Net's float whenever the poly schedule changes it.
  Groups keep float lrs otherwise: checkpoints and logs stay nnU-Net's.
- ``clip_grad_norm_`` clamps the coefficient on the device (no sync unless error_if_nonfinite).
- ``GradScaler.unscale_``/``update`` work in place on device tensors (``_amp_update_scale_``).
- autocast must not cache casts across a capture: ``cache_enabled=False`` (as
  ``make_graphed_callables`` demands); the numbers are the same.
- warm-up before capture, on a side stream (torch docs, "whole network capture"): the first
  steps at each shape run eagerly on the real batches (cudnn autotune, torch.compile's compile,
  lazy momentum buffers happen there), so no batch is skipped or trained twice.
- nnU-Net's ``train_step`` returns ``l.detach().cpu().numpy()``, a sync per step: the graphed step
  returns a device copy of the loss, ``losses_to_host`` brings an epoch's losses over at once.

Refused (eager steps, one log line): non-CUDA devices, DDP, an ignore label (nnU-Net's loss then
branches on ``num_fg > 0``, a host sync), an optimizer other than SGD, a ``train_step`` that a
trainer subclass rewrote. A capture that fails falls back to eager for that shape, logged once.
On a device a graph replays what it captured: anything that REPLACES the optimizer's momentum
buffers (``optimizer.load_state_dict``: dry run, timing warm-ups) is detected and that shape is
warmed up and captured again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

WARMUP_STEPS = 3  # eager steps per shape before capture (torch docs use 3; they train on real batches)
_TRAIN_STEP_OWNERS = ("nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "pgps.nnunet.base")


def unavailable_reason(trainer: Any) -> str | None:
    """Why this trainer's step cannot be captured, or None."""
    if trainer.device.type != "cuda":
        return f"device {trainer.device} is not a CUDA device"
    if getattr(trainer, "is_ddp", False):
        return "DDP is not captured (it needs its own graph-safe setup)"
    if trainer.label_manager.ignore_label is not None:
        return "the dataset has an ignore label: nnU-Net's loss then branches on a device value (a host sync)"
    if not isinstance(trainer.optimizer, torch.optim.SGD):
        return f"optimizer {type(trainer.optimizer).__name__}: only SGD (fused, tensor lr) is captured"
    owner = next(c for c in type(trainer).__mro__ if "train_step" in c.__dict__)
    if owner.__module__ not in _TRAIN_STEP_OWNERS:
        return f"{owner.__name__} rewrites train_step; only nnU-Net's step is captured"
    return None


def make_fused(optimizer: torch.optim.Optimizer) -> None:
    """Switch SGD to its fused kernel (tensor lr, grad-scaler aware); idempotent, and again after
    a checkpoint's ``load_state_dict`` restored ``fused=False``."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
    optimizer.defaults["fused"], optimizer.defaults["foreach"] = True, False
    optimizer._step_supports_amp_scaling = True  # type: ignore[attr-defined]  # what SGD(fused=True) sets in __init__


class StaticStep:
    """nnU-Net's ``train_step`` on fixed input buffers: ``load`` copies a batch in, ``run`` does
    forward, loss, backward, unscale, clip, optimizer step and scaler update reading only those
    buffers and returns the loss as a device tensor (no host sync). Run eagerly it is nnU-Net's
    step; captured, it is the graph."""

    def __init__(self, trainer: Any, data: torch.Tensor, target: torch.Tensor | Sequence[torch.Tensor]) -> None:
        self.trainer = trainer
        dev = trainer.device
        self.data = torch.empty(data.shape, dtype=data.dtype, device=dev)
        self.target_is_list = isinstance(target, list | tuple)
        targets = [target] if isinstance(target, torch.Tensor) else list(target)
        self.targets = [torch.empty(t.shape, dtype=t.dtype, device=dev) for t in targets]

    @staticmethod
    def key(batch: dict) -> tuple:
        target = batch["target"]
        targets = list(target) if isinstance(target, list | tuple) else [target]
        return (tuple(batch["data"].shape), batch["data"].dtype, tuple((tuple(t.shape), t.dtype) for t in targets))

    def load(self, batch: dict) -> None:
        self.data.copy_(batch["data"], non_blocking=True)
        target = batch["target"]
        for buf, t in zip(self.targets, target if self.target_is_list else [target]):
            buf.copy_(t, non_blocking=True)

    def run(self) -> torch.Tensor:
        tr = self.trainer
        target = self.targets if self.target_is_list else self.targets[0]
        tr.optimizer.zero_grad(set_to_none=True)
        cuda = tr.device.type == "cuda"
        with torch.autocast(tr.device.type, enabled=True, cache_enabled=False) if cuda else nullcontext():
            output = tr.network(self.data)
            loss = tr.loss(output, target)
        if tr.grad_scaler is not None:
            tr.grad_scaler.scale(loss).backward()
            tr.grad_scaler.unscale_(tr.optimizer)
            torch.nn.utils.clip_grad_norm_(tr.network.parameters(), 12)
            tr.grad_scaler.step(tr.optimizer)
            tr.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tr.network.parameters(), 12)
            tr.optimizer.step()
        return loss.detach()


class CudaCapture:
    """The real backend: ``torch.cuda.graph``, one private memory pool per graph. Capture errors
    are thread-local: nnU-Net's pin-memory thread keeps pinning batches during a capture, which
    the default "global" mode would forbid (as torch.compile's cudagraph trees also choose)."""

    def capture(self, fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = fn()
        return graph.replay, out


class EagerReplay:
    """Test backend for machines without CUDA: 'capture' runs nothing (like a real capture) and
    'replay' runs the captured function eagerly into the same output tensor, so every piece of
    bookkeeping around the graph can be checked on a CPU."""

    def __init__(self) -> None:
        self.captures = 0

    def capture(self, fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        self.captures += 1
        out = torch.zeros(())

        def replay() -> None:
            out.copy_(fn())

        return replay, out


@dataclass
class _Shape:
    static: StaticStep
    warmups: int = 0
    replay: Callable[[], None] | None = None
    loss: torch.Tensor | None = None
    buffers: list = field(default_factory=list)  # the momentum buffers the graph updates (kept alive)
    scale: Any = None
    failed: str | None = None
    stats: dict = field(default_factory=dict)


class GraphedTrainStep:
    """``trainer.train_step`` replacement: per batch shape, ``warmup`` eager steps on static
    buffers, then one capture, then replays. Returns ``{'loss': device tensor}``."""

    def __init__(
        self,
        trainer: Any,
        warmup: int = WARMUP_STEPS,
        backend: Any | None = None,
        untracked_forward: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        self.trainer = trainer
        self.warmup = max(1, int(warmup))
        self.backend = backend if backend is not None else CudaCapture()
        self.untracked_forward = untracked_forward  # replays run no Python forward hooks: count them here
        self.shapes: dict[tuple, _Shape] = {}
        self.history: list[dict] = []  # stats of shapes dropped by clear()
        self._lr: list[torch.Tensor] = []
        self._lr_values: list[float] = []
        cuda = trainer.device.type == "cuda"
        self._side = torch.cuda.Stream(trainer.device) if cuda else None
        make_fused(trainer.optimizer)

    # ------------------------------------------------------------ bookkeeping
    def _momentum(self) -> list:
        opt = self.trainer.optimizer
        return [opt.state.get(p, {}).get("momentum_buffer") for g in opt.param_groups for p in g["params"]]

    def _scale(self) -> Any:
        scaler = self.trainer.grad_scaler
        return None if scaler is None else getattr(scaler, "_scale", None)

    def _stale(self, entry: _Shape) -> bool:
        now = self._momentum()
        return (
            len(now) != len(entry.buffers)
            or any(a is not b for a, b in zip(now, entry.buffers))
            or self._scale() is not entry.scale
        )

    def _sync_lr(self) -> None:
        """Refill the captured lr tensors from nnU-Net's float lrs (poly schedule, per epoch)."""
        for i, group in enumerate(self.trainer.optimizer.param_groups):
            lr = float(group["lr"])
            if self._lr_values[i] != lr:
                self._lr[i].fill_(lr)
                self._lr_values[i] = lr

    def clear(self) -> None:
        """Drop every graph (a PGPS stage never comes back; frees their memory pools)."""
        self.history.extend(self.stats())
        self.shapes.clear()

    def stats(self) -> list[dict]:
        """Per shape: warm-up steps, capture seconds, replays, fallback reason."""
        return [dict(e.stats) for e in self.shapes.values()]

    # ------------------------------------------------------------ the step
    def _eager(self, entry: _Shape) -> torch.Tensor:
        if self._side is None:
            return entry.static.run()
        self._side.wait_stream(torch.cuda.current_stream(self.trainer.device))
        with torch.cuda.stream(self._side):
            loss = entry.static.run()
        torch.cuda.current_stream(self.trainer.device).wait_stream(self._side)
        return loss

    def _body(self, entry: _Shape) -> Callable[[], torch.Tensor]:
        """What is captured: the static step with the optimizer reading the lr TENSORS (the graph
        keeps their addresses; ``_sync_lr`` refills them). nnU-Net's float lrs are put back at once."""

        def body() -> torch.Tensor:
            groups = self.trainer.optimizer.param_groups
            floats = [g["lr"] for g in groups]
            for g, lr in zip(groups, self._lr):
                g["lr"] = lr
            try:
                return entry.static.run()
            finally:
                for g, lr in zip(groups, floats):
                    g["lr"] = lr

        return body

    def _capture(self, entry: _Shape) -> None:
        opt = self.trainer.optimizer
        make_fused(opt)  # a checkpoint load may have restored fused=False
        if len(self._lr) != len(opt.param_groups):
            dev = self.trainer.device
            self._lr = [torch.zeros((), dtype=torch.float32, device=dev) for _ in opt.param_groups]
            self._lr_values = [float("nan")] * len(opt.param_groups)
        self._sync_lr()
        t0 = time.perf_counter()
        try:
            opt.zero_grad(set_to_none=True)
            entry.replay, entry.loss = self.backend.capture(self._body(entry))
        except Exception as exc:  # any capture failure: keep training this shape eagerly
            first = str(exc).splitlines()[0] if str(exc) else ""
            entry.failed = f"{type(exc).__name__}: {first}"[:300]
            entry.replay = None
            _reset_scaler_state(self.trainer.grad_scaler)
            opt.zero_grad(set_to_none=True)
            self.trainer.print_to_log_file(
                f"PGPS_CUDA_GRAPHS: capture at {list(entry.static.data.shape)} failed ({entry.failed}); "
                "this shape trains with eager steps"
            )
        entry.buffers = self._momentum()
        entry.scale = self._scale()
        entry.stats["capture_s"] = time.perf_counter() - t0
        entry.stats["fallback"] = entry.failed

    def __call__(self, batch: dict) -> dict:
        key = StaticStep.key(batch)
        entry = self.shapes.get(key)
        if entry is None:
            entry = _Shape(StaticStep(self.trainer, batch["data"], batch["target"]))
            entry.stats = {"data_shape": list(key[0]), "warmup_steps": 0, "capture_s": None, "replays": 0}
            entry.stats["fallback"] = None
            self.shapes[key] = entry
        elif entry.replay is not None and self._stale(entry):
            entry.replay, entry.loss, entry.warmups = None, None, 0  # optimizer state replaced: capture anew
        entry.static.load(batch)
        if entry.failed is not None or entry.warmups < self.warmup:
            if entry.failed is None:
                entry.warmups += 1
                entry.stats["warmup_steps"] += 1
            return {"loss": self._eager(entry).clone()}
        fresh = entry.replay is None
        if fresh:
            self._capture(entry)
        replay, loss = entry.replay, entry.loss
        if replay is None or loss is None:  # the capture failed: this shape trains eagerly
            return {"loss": self._eager(entry).clone()}
        self._sync_lr()
        replay()
        entry.stats["replays"] += 1
        if not fresh and self.untracked_forward is not None:
            self.untracked_forward(entry.static.data)  # the capture ran the hooks for this batch
        return {"loss": loss.clone()}


def _reset_scaler_state(scaler: Any) -> None:
    """A capture that failed between ``unscale_`` and ``update`` leaves the scaler mid-step."""
    if scaler is None:
        return
    from collections import defaultdict

    from torch.amp.grad_scaler import _refresh_per_optimizer_state

    scaler._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)


def losses_to_host(outputs: list[dict]) -> list[dict]:
    """An epoch's step outputs as nnU-Net's ``on_train_epoch_end`` expects them (0-d numpy
    losses): device losses come over in ONE transfer, at epoch end."""
    tensors = [o["loss"] for o in outputs if isinstance(o.get("loss"), torch.Tensor)]
    if not tensors:
        return outputs
    host = torch.stack([t.float() for t in tensors]).cpu().numpy()
    it = iter(host)
    return [{**o, "loss": np.asarray(next(it))} if isinstance(o.get("loss"), torch.Tensor) else o for o in outputs]


def make_graphed_step(
    trainer: Any, requested: str, untracked_forward: Callable[[torch.Tensor], None] | None = None
) -> tuple[GraphedTrainStep | None, dict]:
    """The graphed step for ``PGPS_CUDA_GRAPHS=requested`` (or None: eager) and the
    ``pgps_config.json`` entry saying which, and why."""
    config: dict = {"requested": requested, "active": False, "reason": None, "warmup_steps": WARMUP_STEPS}
    if requested != "on":
        return None, config
    reason = unavailable_reason(trainer)
    if reason is not None:
        config["reason"] = reason
        trainer.print_to_log_file(f"PGPS_CUDA_GRAPHS=on: {reason}; training with eager steps")
        return None, config
    config.update(active=True, optimizer="SGD fused=True, tensor lr during capture", autocast_cache=False)
    return GraphedTrainStep(trainer, untracked_forward=untracked_forward), config
