"""The one nnU-Net 2.8 trainer base behind every PGPS trainer. It asks the schedule which patch
and batch epoch ``e`` trains with and changes nothing else: same optimizer, loss, poly LR over
all epochs, deep supervision. Only the TRAINING loader (and its patch-dependent augmentation)
is rebuilt at a stage change; per-epoch validation and the final sliding-window inference use
the planned patch and batch. The stage is a pure function of the epoch, so nnU-Net's ``--c``
resumes on the right stage."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from pgps import fileio
from pgps.errors import PGPSError
from pgps.nnunet.clock import PhaseTimes
from pgps.nnunet.compiling import configure_static_recompiles
from pgps.nnunet.dryrun import dry_run, unwrap
from pgps.nnunet.energy import StageEnergy, tracking_mode
from pgps.nnunet.geometry import poolings_from_strides, rank_batch_sizes, rank_oversample
from pgps.nnunet.knobs import read_knobs
from pgps.nnunet.loaders import PatchSwitch, build_train_loader, finish_loader
from pgps.nnunet.norm import make_instance_norm_one_voxel_safe
from pgps.nnunet.progress import ThrottledProgressPlot
from pgps.nnunet.record import RunRecord, ShapeTally, record_final_validation
from pgps.nnunet.seeding import seed_everything
from pgps.nnunet.timebudget import actual_stage_seconds, apply_plan, make_plan, replan
from pgps.schedule import Schedule, ScheduleError, build_schedule

CONFIG_NAME = "pgps_config.json"
_CUDA = torch.device("cuda")  # nnU-Net's default device argument


def _num(x: Any) -> Any:
    """JSON-safe float (NaN -> None)."""
    if x is None:
        return None
    if isinstance(x, list | tuple | np.ndarray):
        return [_num(v) for v in x]
    v = float(x)
    return None if math.isnan(v) else v


class PGPSTrainerBase(nnUNetTrainer):
    """Subclasses set ``pgps_mode`` (a schedule mode) and, where needed, the class options."""

    pgps_mode: ClassVar[str] = "pgps"
    pgps_start_bottleneck: ClassVar[tuple[int, ...] | None] = None
    pgps_multicrop: ClassVar[bool] = False  # performance mode: load planned-batch cases, crop several times
    pgps_safe_instance_norm: ClassVar[bool] = False  # allow a 1-voxel bottleneck (journal modes)
    pgps_oversample: ClassVar[float | None] = 0.5  # official PGPS fixes 0.5; None keeps nnU-Net's 0.33

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = _CUDA,
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pgps_knobs = read_knobs()
        seed_everything(self.pgps_knobs.seed)
        self.num_epochs = self.pgps_knobs.num_epochs
        self.num_iterations_per_epoch = self.pgps_knobs.iters_per_epoch
        self.num_val_iterations_per_epoch = self.pgps_knobs.val_iters
        self.save_every = self.pgps_knobs.save_every
        if self.pgps_oversample is not None:
            self.oversample_foreground_percent = self.pgps_oversample
        self._pgps_global_oversample = self.oversample_foreground_percent
        cm = self.configuration_manager
        self.pgps_planned_patch = tuple(int(x) for x in cm.patch_size)
        self.pgps_planned_batch = int(cm.batch_size)
        where = f"plans {self.plans_manager.plans_name}, configuration {configuration}"
        strides = cm.network_arch_init_kwargs.get("strides")
        if strides is None:
            raise PGPSError(f"{where}: architecture arch_kwargs has no 'strides'; cannot count poolings per axis")
        self.pgps_poolings = poolings_from_strides(strides, len(self.pgps_planned_patch), where)
        try:
            self.pgps_schedule: Schedule = build_schedule(
                self.pgps_planned_patch,
                self.pgps_poolings,
                self.num_epochs,
                self.pgps_planned_batch,
                mode=self.pgps_mode,
                seed=self.pgps_knobs.seed,
                start_bottleneck=self.pgps_start_bottleneck,
            )
        except ScheduleError as exc:
            raise PGPSError(f"{where}: {exc}") from None
        self._pgps_stage: int | None = None
        self._pgps_tally = ShapeTally()
        self._pgps_record: RunRecord | None = None
        self._pgps_energy: StageEnergy | None = None
        self.pgps_dry_runs: list[dict] = []
        self.pgps_time_plan: dict | None = None  # PGPS_TIME_BUDGET: measured once, then from the checkpoint
        self._pgps_plot: ThrottledProgressPlot | None = None
        self._pgps_phases = PhaseTimes()  # this epoch's time per phase (pgps.nnunet.clock)

    # ---------------------------------------------------------------- helpers
    @property
    def _world(self) -> tuple[int, int]:
        return (dist.get_world_size(), dist.get_rank()) if self.is_ddp else (1, 0)

    def pgps_rank_batch(self, global_batch: int) -> int:
        """This rank's share of a stage batch, split like nnU-Net splits the planned batch."""
        world, rank = self._world
        return rank_batch_sizes(global_batch, world)[rank]

    def pgps_config(self) -> dict:
        import nnunetv2

        world, _ = self._world
        return {
            "trainer": self.__class__.__name__,
            "mode": self.pgps_mode,
            "knobs": self.pgps_knobs.to_dict(),
            "planned_patch_size": list(self.pgps_planned_patch),
            "planned_batch_size": self.pgps_planned_batch,
            "poolings": list(self.pgps_poolings),
            "start_bottleneck": list(self.pgps_start_bottleneck) if self.pgps_start_bottleneck else None,
            "oversample_foreground_percent": self._pgps_global_oversample,
            "multicrop": self.pgps_multicrop,
            "one_voxel_safe_instance_norm": self.pgps_safe_instance_norm,
            "configuration": self.configuration_name,
            "plans": self.plans_manager.plans_name,
            "device": str(self.device),
            "world_size": world,
            "versions": {"torch": torch.__version__, "nnunetv2": getattr(nnunetv2, "__version__", "2.8.x")},
            "dry_runs": self.pgps_dry_runs,
            "torch_compile": getattr(self, "pgps_compile_settings", None),
            "time_budget": self.pgps_time_plan,
            "codecarbon": {
                "country": None if self.pgps_knobs.codecarbon == "off" else self.pgps_knobs.codecarbon,
                "tracking_mode": None if self.pgps_knobs.codecarbon == "off" else tracking_mode(world),
            },
        }

    def _dry_run_wanted(self) -> bool:
        mode = self.pgps_knobs.dry_run
        return mode == "on" or (mode == "auto" and self.device.type == "cuda")

    def pgps_dry_run_targets(self) -> list[tuple[tuple[int, ...], int]]:
        """The planned patch x batch, plus the stage with the most voxels per batch if larger."""
        targets = [(self.pgps_planned_patch, self.pgps_planned_batch)]
        biggest = max(self.pgps_schedule.stages, key=lambda s: s.batch_size * math.prod(s.patch_size))
        if biggest.batch_size * math.prod(biggest.patch_size) > self.pgps_planned_batch * math.prod(
            self.pgps_planned_patch
        ):
            targets.append((biggest.patch_size, biggest.batch_size))
        return targets

    # ---------------------------------------------------------------- nnU-Net hooks
    def initialize(self) -> None:
        if self._do_i_compile():  # nnU-Net compiles in super().initialize(): one static graph per stage
            self.pgps_compile_settings = configure_static_recompiles(self.pgps_schedule)
        super().initialize()
        if self.pgps_safe_instance_norm:
            make_instance_norm_one_voxel_safe(unwrap(self.network))

    def on_train_start(self) -> None:
        if not self.was_initialized:
            self.initialize()
        if self._dry_run_wanted():
            for patch, batch in self.pgps_dry_run_targets():
                seconds = dry_run(self, patch, self.pgps_rank_batch(batch))
                self.pgps_dry_runs.append({"patch_size": list(patch), "batch_size": batch, "seconds": seconds})
                self.print_to_log_file(f"PGPS dry run at patch {list(patch)} x batch {batch}: ok ({seconds:.2f} s)")
        super().on_train_start()  # planned-size train + val loaders; the train one is replaced per stage
        finish_loader(self.dataloader_train)
        self.dataloader_train = None
        self._pgps_stage = None
        if self.pgps_knobs.time_budget != "off" and self.pgps_time_plan is None:
            if self.current_epoch != 0:
                raise PGPSError(
                    f"{self.output_folder}: resuming at epoch {self.current_epoch}, but the checkpoint holds no "
                    f"time-budget plan; unset PGPS_TIME_BUDGET (={self.pgps_knobs.time_budget}) to resume this run"
                )
            apply_plan(self, make_plan(self))
            p = self.pgps_time_plan
            self.print_to_log_file(
                f"PGPS time budget {p['budget_seconds']:.1f} s: epochs {p['stage_epochs']} at stages "
                f"{p['stage_indices']}, predicted {p['predicted_seconds']:.1f} s (warm-up {p['warmup_seconds']:.1f} s)"
            )
        if self.local_rank == 0:
            for stale in Path(self.output_folder).glob(
                f".*{fileio.PARTIAL}"
            ):  # temp files of writes a kill interrupted
                stale.unlink()
            config = self.pgps_config()
            fileio.write_json(f"{self.output_folder}/{CONFIG_NAME}", config)
            self._pgps_record = RunRecord(
                self.output_folder, self.__class__.__name__, config, self.pgps_schedule.to_dict()
            )
            if self.pgps_time_plan is not None:
                self._pgps_record.data["time_budget"] = dict(self.pgps_time_plan)
            self._pgps_record.start(self.current_epoch)
            if self.pgps_knobs.codecarbon != "off":  # started by run_training at the first epoch's start
                self._pgps_energy = StageEnergy(
                    self.pgps_knobs.codecarbon,
                    self.output_folder,
                    f"{self.__class__.__name__}_{self.plans_manager.dataset_name}",
                    config["codecarbon"]["tracking_mode"],
                )
            # nnU-Net's per-epoch progress.png, at most 2 % of the wall time
            self._pgps_plot = ThrottledProgressPlot()
            self.logger.plot_progress_png = lambda folder: self._pgps_plot.request(self.logger.local_logger, folder)
        self._pgps_tally.attach(self.network)
        self.print_to_log_file(f"PGPS schedule ({self.pgps_mode}): {json.dumps(self.pgps_schedule.to_dict())}")

    def _pgps_enter_stage(self, epoch: int) -> None:
        idx = self.pgps_schedule.stage_index(epoch)
        if idx == self._pgps_stage:
            return
        finish_loader(self.dataloader_train)
        stage = self.pgps_schedule.stages[idx]
        world, rank = self._world
        batch = self.pgps_rank_batch(stage.batch_size)
        oversample = rank_oversample(stage.batch_size, world, rank, self._pgps_global_oversample)
        if self.pgps_schedule.candidates:  # rpss: one loader per candidate patch
            n = self._n_proc_per_loader(len(self.pgps_schedule.candidates))
            loaders = {
                tuple(c): build_train_loader(self, c, batch, oversample, num_processes=n)
                for c in self.pgps_schedule.candidates
            }
            self.dataloader_train = PatchSwitch(loaders, self._rpss_pick(epoch))
        else:
            cases = self.pgps_rank_batch(self.pgps_planned_batch) if self.pgps_multicrop else None
            self.dataloader_train = build_train_loader(self, stage.patch_size, batch, oversample, cases_per_batch=cases)
        self.batch_size = batch
        self._pgps_stage = idx
        name = f"stage{idx:02d}_{'x'.join(map(str, stage.patch_size))}_b{stage.batch_size}"
        if self._pgps_energy is not None:
            self._pgps_energy.enter_stage(name)
        self.print_to_log_file(f"PGPS {name}: epochs {stage.start_epoch}-{stage.end_epoch - 1}, batch/rank {batch}")

    @staticmethod
    def _n_proc_per_loader(n_loaders: int) -> int:
        from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

        n = get_allowed_n_proc_DA()
        return 0 if n == 0 else max(1, n // n_loaders)

    def _rpss_pick(self, epoch: int) -> Any:
        sched = self.pgps_schedule
        return lambda it: sched.rpss_patch(epoch, it)

    def on_train_epoch_start(self) -> None:
        # per-epoch reseed: a resumed run draws what an uninterrupted one would (single-process loading)
        seed_everything(self.pgps_knobs.seed * 1_000_003 + self.current_epoch)
        t0 = time.perf_counter()
        self._pgps_enter_stage(self.current_epoch)
        self._pgps_phases.stage_switch = time.perf_counter() - t0
        if isinstance(self.dataloader_train, PatchSwitch):
            self.dataloader_train.restart(self._rpss_pick(self.current_epoch))
        self._pgps_tally.reset()
        super().on_train_epoch_start()

    def on_epoch_end(self) -> None:
        """The epoch's entry goes to disk BEFORE nnU-Net's checkpoint (see pgps.nnunet.record) with
        the time so far, and again once nnU-Net's bookkeeping (checkpoints, plot) is done: the
        epoch ends there (pgps.nnunet.clock)."""
        t0 = time.perf_counter()
        entry = self._epoch_entry() if self._pgps_record is not None else None
        if self.pgps_time_plan is not None:  # every rank: a re-plan is broadcast under DDP
            self._pgps_follow_budget(entry)
        if entry is not None:
            self._pgps_phases.epoch_end = time.perf_counter() - t0
            entry["timing_s"] = self._pgps_phases.as_dict()
            self._pgps_record.add_epoch(entry)
        super().on_epoch_end()
        if entry is not None:
            entry["epoch_end"] = time.time()
            entry["wall_time"] = entry["epoch_end"] - entry["epoch_start"]
            self._pgps_phases.epoch_end = time.perf_counter() - t0
            entry["timing_s"] = self._pgps_phases.as_dict()
            self._pgps_record.save()

    def _pgps_follow_budget(self, entry: dict | None) -> None:
        """Closed-loop time budget: re-plan the epochs not yet trained, and keep plan-vs-actual
        in the run record (and the current plan in pgps_config.json) up to date."""
        rec = self._pgps_record
        epochs = [*rec.data["epochs"], entry] if rec is not None and entry is not None else []
        resumed = {r["at_epoch"] for r in rec.data["resumes"]} if rec is not None else set()
        change = replan(self, epochs, resumed)
        if rec is None:
            return
        if change is not None:
            rec.data["time_budget"] = dict(self.pgps_time_plan)
            rec.data["schedule"] = self.pgps_schedule.to_dict()
            fileio.write_json(f"{self.output_folder}/{CONFIG_NAME}", self.pgps_config())
            self.print_to_log_file(
                f"PGPS re-plan after epoch {change['after_epoch']} ({change['spent_seconds']:.1f} s "
                f"spent): epochs {change['stage_epochs']} at stages {change['stage_indices']}"
            )
        plan = rec.data["time_budget"]
        plan["actual_stage_seconds"] = actual_stage_seconds(epochs, len(self.pgps_schedule.stages), resumed)
        plan["actual_seconds"] = sum(plan["actual_stage_seconds"])

    def _epoch_entry(self) -> dict:
        e = self.current_epoch
        stage = self.pgps_schedule.stage_at(e)
        get = self.logger.get_value
        start = float(get("epoch_start_timestamps", step=-1))
        end = time.time()
        return {
            "epoch": e,
            "stage": self.pgps_schedule.stage_index(e),
            "patch_size": list(stage.patch_size),
            "batch_size": stage.batch_size,
            "train_input_shapes": ShapeTally.as_list(self._pgps_tally.train),
            "val_input_shapes": ShapeTally.as_list(self._pgps_tally.val),
            "epoch_start": start,
            "epoch_end": end,
            "wall_time": end - start,
            "lr": _num(get("lrs", step=-1)),
            "train_loss": _num(get("train_losses", step=-1)),
            "val_loss": _num(get("val_losses", step=-1)),
            "pseudo_dice": _num(get("dice_per_class_or_region", step=-1)),
            "mean_pseudo_dice": _num(get("mean_fg_dice", step=-1)),
            "ema_pseudo_dice": _num(get("ema_fg_dice", step=-1)),
        }

    def run_training(self) -> None:
        """nnU-Net 2.8's loop with three changes: it re-reads ``num_epochs`` every epoch (``range``
        fixes it at the start; the time budget's closed loop changes it mid-run); it times the
        phases of each epoch with ``perf_counter`` around the calls it makes anyway (no device
        sync added: the step time is taken at epoch granularity, after ``on_train_epoch_end``
        has reduced the losses); and codecarbon covers exactly the session's epochs."""
        self.on_train_start()
        while self.current_epoch < self.num_epochs:
            if self._pgps_energy is not None:
                self._pgps_energy.start_session()  # before the first epoch's start time is taken
            self._pgps_phases = phases = PhaseTimes()
            self.on_epoch_start()
            self.on_train_epoch_start()
            t0 = time.perf_counter()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                w0 = time.perf_counter()
                batch = next(self.dataloader_train)
                phases.loader_wait += time.perf_counter() - w0
                train_outputs.append(self.train_step(batch))
            self.on_train_epoch_end(train_outputs)
            t1 = time.perf_counter()
            phases.network_steps = t1 - t0 - phases.loader_wait
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [
                    self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)
                ]
                self.on_validation_epoch_end(val_outputs)
            phases.validation = time.perf_counter() - t1
            self.on_epoch_end()
        if self._pgps_energy is not None:
            self._pgps_energy.stop()  # right after the last epoch's end
        self.on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """nnU-Net's final validation, timed: ``clock.final_validation_s`` (not training time)."""
        t0 = time.perf_counter()
        super().perform_actual_validation(save_probabilities)
        seconds = time.perf_counter() - t0
        if self.local_rank != 0:
            return
        if self._pgps_record is not None:
            self._pgps_record.final_validation_s = seconds
            self._pgps_record.save()
        else:  # nnUNetv2_train --val: the record was written by the training process
            record_final_validation(self.output_folder, seconds)

    def on_train_end(self) -> None:
        if self._pgps_plot is not None:
            self._pgps_plot.flush()  # the final progress.png shows every epoch
        super().on_train_end()
        finish_loader(self.dataloader_train)
        self._pgps_tally.detach()

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus the schedule, written to a temp file and renamed: a kill
        mid-write never leaves a torn ``checkpoint_latest.pth`` (nnU-Net 2.8 writes in place)."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        mod = unwrap(self.network)
        checkpoint = {
            "network_weights": mod.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "pgps": {
                "schedule": self.pgps_schedule.to_dict(),
                "knobs": self.pgps_knobs.to_dict(),
                "time_plan": self.pgps_time_plan,
            },
        }
        fileio.write_with(filename, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """Refuse to resume a checkpoint whose curriculum differs from the current settings'."""
        if isinstance(filename_or_checkpoint, str):
            ckpt = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False, mmap=True)
            where = filename_or_checkpoint
        else:
            ckpt, where = filename_or_checkpoint, "checkpoint"
        saved = ckpt.get("pgps")
        if saved is None:
            raise PGPSError(f"{where}: not written by a PGPS trainer (no 'pgps' entry); cannot check its curriculum")
        plan, budget = saved.get("time_plan"), self.pgps_knobs.time_budget
        if plan is not None and budget == "off":
            raise PGPSError(
                f"{where}: the checkpoint was trained with PGPS_TIME_BUDGET={plan['time_budget']}; "
                "set it again to resume"
            )
        if plan is None and budget != "off":
            raise PGPSError(f"{where}: the checkpoint holds no time-budget plan; unset PGPS_TIME_BUDGET to resume it")
        if plan is not None:
            apply_plan(self, plan)  # never re-measured: the resumed run trains the schedule it started with
        mine = self.pgps_schedule.to_dict()
        if saved["schedule"] != mine:
            diff = sorted(k for k in set(mine) | set(saved["schedule"]) if mine.get(k) != saved["schedule"].get(k))
            detail = ", ".join(
                f"{k}: checkpoint {saved['schedule'].get(k)!r} vs now {mine.get(k)!r}"
                for k in diff
                if k not in ("stages", "voxel_fraction")
            )
            raise PGPSError(
                f"{where}: the checkpoint was trained with a different PGPS schedule ({detail or 'stages differ'}); "
                "resume with the PGPS_* values in pgps_config.json or start a new run"
            )
        if isinstance(filename_or_checkpoint, str):
            del ckpt
            super().load_checkpoint(filename_or_checkpoint)
        else:
            super().load_checkpoint(filename_or_checkpoint)
