"""The PGPS trainers, instrumented for the GPU check and found BY NAME by ``nnUNetv2_train`` and
``nnUNetv2_predict`` (``nnUNet_extTrainer=benchmarks/gpu/probe``): benchmarks.instrument's
per-iteration timing (step, loader wait, hooks) plus the GPU's peak memory per epoch, written
after every epoch to ``<fold>/gpu_probe/<pid>.json`` in the benchmark worker's raw format, so
``benchmarks.stats`` (per-stage costs, stage switches, the protocol projection) reads it as is.
A killed session keeps what its last finished epoch wrote."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from benchmarks.instrument import BenchMixin

from pgps import fileio
from pgps.trainers.nnUNetTrainerConstant import nnUNetTrainerConstant
from pgps.trainers.nnUNetTrainerPGPS import nnUNetTrainerPGPS
from pgps.trainers.nnUNetTrainerPGPSPlus import nnUNetTrainerPGPSPlus

#: device_check's setting for a run whose final validation is not wanted
SKIP_VALIDATION = ("GPU_PROBE_FINAL_VALIDATION", "off")


class GpuProbeMixin(BenchMixin):
    """No ``__init__``: nnU-Net records its init arguments from the signature."""

    def _probe(self) -> dict:
        return self.__dict__.setdefault("_probe_state", {"t0": time.perf_counter(), "epochs": []})

    def on_train_start(self) -> None:
        self._probe()["t0"] = time.perf_counter()
        super().on_train_start()

    def on_train_epoch_start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._probe()["epoch_t0"] = time.perf_counter()
        super().on_train_epoch_start()

    def on_epoch_end(self) -> None:
        epoch = self.current_epoch
        super().on_epoch_end()
        probe = self._probe()
        cuda = self.device.type == "cuda"
        probe["epochs"].append(
            {
                "epoch": epoch,
                "epoch_s": time.perf_counter() - probe.get("epoch_t0", probe["t0"]),
                "cuda_peak_mib": torch.cuda.max_memory_allocated(self.device) / 2**20 if cuda else None,
                "cuda_reserved_mib": torch.cuda.memory_reserved(self.device) / 2**20 if cuda else None,
            }
        )
        self._probe_dump()

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Skipped where device_check says so (``GPU_PROBE_FINAL_VALIDATION=off``: the phases that time training
        only; the pgps phase validates and the predict phase scores its model): device time and, in the CPU dry
        run, two spawn pools that each import torch."""
        if os.environ.get(SKIP_VALIDATION[0]) == SKIP_VALIDATION[1]:
            self.print_to_log_file("final validation skipped: this device-check phase times training only")
            return
        super().perform_actual_validation(save_probabilities)

    def _probe_dump(self) -> None:
        probe, log = self._probe(), self._bench_log()
        t0 = probe["t0"]

        def rel(t: Any) -> Any:
            return None if t is None else t - t0

        iterations = [
            {**it, **{k: rel(it[k]) for k in ("next_t0", "next_t1", "step_t0", "step_t1")}} for it in log["iterations"]
        ]
        sched = getattr(self, "pgps_schedule", None)
        raw = {
            "trainer": type(self).__name__,
            "pid": os.getpid(),
            "device": str(self.device),
            "num_epochs": self.num_epochs,
            "iters_per_epoch": self.num_iterations_per_epoch,
            "val_iters": self.num_val_iterations_per_epoch,
            "planned_patch": list(self.configuration_manager.patch_size),
            "planned_batch": int(self.configuration_manager.batch_size),
            "training_s": time.perf_counter() - t0,
            "iterations": iterations,
            "hooks": [{**h, "t0": rel(h["t0"]), "t1": rel(h["t1"])} for h in log["hooks"]],
            "loaders": [{**ld, "t": rel(ld["t"])} for ld in log["loaders"]],
            "schedule": sched.to_dict() if sched is not None else None,
            "start_bottleneck": list(self.pgps_start_bottleneck) if self.pgps_start_bottleneck else None,
            "probe_epochs": probe["epochs"],
            "compile": os.environ.get("nnUNet_compile"),
        }
        folder = Path(self.output_folder) / "gpu_probe"
        folder.mkdir(parents=True, exist_ok=True)
        fileio.write_json(folder / f"{os.getpid()}.json", raw)


class ProbennUNetTrainerConstant(GpuProbeMixin, nnUNetTrainerConstant):
    pass


class ProbennUNetTrainerPGPS(GpuProbeMixin, nnUNetTrainerPGPS):
    pass


class ProbennUNetTrainerPGPSPlus(GpuProbeMixin, nnUNetTrainerPGPSPlus):
    pass
