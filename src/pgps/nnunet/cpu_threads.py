"""Torch's CPU threads for a training: what ``OMP_NUM_THREADS`` says, not the machine's core count.

nnU-Net 2.8's ``nnUNetv2_train -device cpu`` calls ``torch.set_num_threads(multiprocessing.cpu_count())`` before it
builds the trainer, whatever ``OMP_NUM_THREADS`` asks. Two consequences, both measured here: two trainings side by
side on a 2-core machine run four spinning OpenMP threads and each becomes about 8x slower than alone (16^3 plan:
0.094 s per iteration alone, 0.6-1.0 s side by side), and the order of the sums -- hence the bits of a CPU result
-- depends on the core count of the machine, which defeats the pipeline's ``runtime.threads`` pin. A PGPS trainer
on the CPU therefore follows ``OMP_NUM_THREADS`` where it is set (the pipeline always sets it); unset, nnU-Net's
choice stands.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from pgps.errors import PGPSError


def requested_threads(environ: Mapping[str, str]) -> int | None:
    """``OMP_NUM_THREADS`` as a thread count (its first, outer level where it lists nested ones), or None if unset."""
    raw = environ.get("OMP_NUM_THREADS", "").strip()
    if not raw:
        return None
    outer = raw.split(",", 1)[0].strip()
    if not outer.isdigit() or int(outer) < 1:
        raise PGPSError(f"OMP_NUM_THREADS={raw!r}: expected a positive whole number of threads, e.g. 1")
    return int(outer)


def pin_cpu_threads(device: torch.device, environ: Mapping[str, str] = os.environ) -> int | None:
    """On the CPU, set torch's intra-op threads to ``OMP_NUM_THREADS``; returns the count set (None: left alone)."""
    if device.type != "cpu":
        return None
    threads = requested_threads(environ)
    if threads is not None:
        torch.set_num_threads(threads)
    return threads
