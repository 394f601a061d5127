"""Per-iteration timing of any nnU-Net trainer WITHOUT editing it: a mixin placed in front of
the trainer class records, with ``time.perf_counter``, how long each ``next(dataloader_train)``
blocked, how long each ``train_step`` took and the shape the network received, plus the duration
of every epoch hook (the stage switch of the PGPS trainers happens in one of them).

The loader is timed by swapping its class for a subclass with a timed ``__next__``, so
``isinstance`` checks in nnU-Net (``_finish()`` at shutdown) and in the trainers still hold."""

from __future__ import annotations

import time
from typing import Any

_TIMED_CLASSES: dict[type, type] = {}


def _timed_class(cls: type) -> type:
    """A subclass of the loader class whose ``__next__`` reports its blocking time to the trainer."""
    if cls not in _TIMED_CLASSES:

        def __next__(self: Any) -> Any:  # noqa: N807 - the iterator protocol's name
            t0 = time.perf_counter()
            batch = super(timed, self).__next__()
            sink = getattr(self, "_bench_sink", None)
            if sink is not None:
                sink(t0, time.perf_counter())
            return batch

        timed = type(f"Timed{cls.__name__}", (cls,), {"__next__": __next__})
        _TIMED_CLASSES[cls] = timed
    return _TIMED_CLASSES[cls]


def _hook_timer(name: str):
    """Wrap one trainer hook: record (epoch, start, end) of every call under ``name``."""

    def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        epoch = self.current_epoch
        try:
            return getattr(super(BenchMixin, self), name)(*args, **kwargs)
        finally:
            self._bench_log()["hooks"].append({"hook": name, "epoch": epoch, "t0": t0, "t1": time.perf_counter()})

    hook.__name__ = name
    return hook


class BenchMixin:
    """Put in front of a trainer class: ``type("BenchX", (BenchMixin, X), {})``.

    No ``__init__`` on purpose: nnU-Net records its init arguments from ``inspect.signature(self.__init__)``."""

    def _bench_log(self) -> dict:
        log = self.__dict__.get("_bench")
        if log is None:
            log = {"iterations": [], "hooks": [], "loaders": [], "pending_wait": None}
            self.__dict__["_bench"] = log
        return log

    # every assignment of the training loader (initial build and each stage rebuild) goes through here
    @property
    def dataloader_train(self) -> Any:
        return self.__dict__.get("_bench_dataloader_train")

    @dataloader_train.setter
    def dataloader_train(self, loader: Any) -> None:
        log = self._bench_log()
        if loader is not None:
            try:
                if type(loader) not in _TIMED_CLASSES.values():
                    loader.__class__ = _timed_class(type(loader))
                loader._bench_sink = self._bench_wait
                timed = True
            except TypeError:  # a class that forbids __class__ assignment: waits fall back to unknown
                timed = False
            log["loaders"].append(
                {
                    "epoch": getattr(self, "current_epoch", 0),
                    "t": time.perf_counter(),
                    "timed": timed,
                    "class": type(loader).__mro__[1 if timed else 0].__name__,
                }
            )
        self.__dict__["_bench_dataloader_train"] = loader

    def _bench_wait(self, t0: float, t1: float) -> None:
        self._bench_log()["pending_wait"] = (t0, t1)

    def train_step(self, batch: dict) -> dict:
        log = self._bench_log()
        wait = log["pending_wait"]
        log["pending_wait"] = None
        data = batch["data"]
        t0, c0 = time.perf_counter(), time.process_time()
        out = super().train_step(batch)
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        t1 = time.perf_counter()
        log["iterations"].append(
            {
                "epoch": self.current_epoch,
                "shape": [int(s) for s in data.shape],
                "next_t0": wait[0] if wait else None,
                "next_t1": wait[1] if wait else None,
                "step_t0": t0,
                "step_t1": t1,
                "step_cpu": time.process_time() - c0,
            }
        )
        return out

    on_train_start = _hook_timer("on_train_start")
    on_train_end = _hook_timer("on_train_end")
    on_epoch_start = _hook_timer("on_epoch_start")
    on_train_epoch_start = _hook_timer("on_train_epoch_start")
    on_train_epoch_end = _hook_timer("on_train_epoch_end")
    on_validation_epoch_start = _hook_timer("on_validation_epoch_start")
    on_validation_epoch_end = _hook_timer("on_validation_epoch_end")
    on_epoch_end = _hook_timer("on_epoch_end")


def instrumented(cls: type) -> type:
    """The benchmark's subclass of a trainer class (keeps the name visible in nnU-Net's output folder)."""
    return type(f"Bench{cls.__name__}", (BenchMixin, cls), {"__module__": __name__})
