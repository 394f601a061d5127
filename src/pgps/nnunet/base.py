"""The one nnU-Net 2.8 trainer base behind every PGPS trainer. It asks the schedule which patch
and batch epoch ``e`` trains with and changes nothing else: same optimizer, loss, poly LR over
all epochs, deep supervision. Only the TRAINING loader (and its patch-dependent augmentation)
is rebuilt at a stage change; per-epoch validation and the final sliding-window inference use
the planned patch and batch. The stage is a pure function of the epoch, so nnU-Net's ``--c``
resumes on the right stage.

This class is the thin layer on nnU-Net's hooks; each concern lives in its own module:
``stage`` (what a stage means on this rank, its loader), ``record`` (run record and config),
``clock`` (the training clock), ``checkpoint`` (save, and the resume check), ``time_budget``
(PGPS_TIME_BUDGET), ``energy`` (codecarbon), ``progress`` (throttled plot), ``dryrun``.
docs/DESIGN.md lists the nnU-Net methods overridden here and why."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from pgps import fileio
from pgps.errors import PGPSError
from pgps.nnunet import checkpoint
from pgps.nnunet.augmentation import augmentation_record, rule_for
from pgps.nnunet.clock import PhaseTimes, epoch_times, resumed_epochs
from pgps.nnunet.compiling import configure_static_recompiles
from pgps.nnunet.cpu_threads import pin_cpu_threads
from pgps.nnunet.cuda_graphs import GraphedTrainStep, losses_to_host, make_graphed_step
from pgps.nnunet.dryrun import dry_run, unwrap
from pgps.nnunet.energy import StageEnergy, tracking_mode
from pgps.nnunet.geometry import poolings_from_strides, rank_batch_sizes
from pgps.nnunet.knobs import Knobs, read_knobs, resume_knobs
from pgps.nnunet.loaders import PatchSwitch, finish_loader
from pgps.nnunet.norm import make_instance_norm_one_voxel_safe
from pgps.nnunet.progress import ThrottledProgressPlot
from pgps.nnunet.record import CONFIG_NAME, RunRecord, epoch_entry, record_final_validation, run_config
from pgps.nnunet.seeding import seed_everything
from pgps.nnunet.shapes import ShapeTally
from pgps.nnunet.stage import build_stage_loader, rank_stage, rpss_pick
from pgps.nnunet.time_budget import trainer_glue
from pgps.nnunet.time_budget.controller import actual_stage_seconds
from pgps.nnunet.time_budget.plan import TimePlan
from pgps.schedule import Schedule, ScheduleError, build_schedule

_CUDA = torch.device("cuda")  # nnU-Net's default device argument


def remove_partials(folder: str | Path) -> None:
    """Remove every temp entry (file or folder) that a killed ``pgps.fileio``-style write left."""
    for stale in Path(folder).glob(f".*{fileio.PARTIAL}*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


class PGPSTrainerBase(nnUNetTrainer):
    """Subclasses set ``pgps_mode`` (a schedule mode) and, where needed, the class options."""

    pgps_mode: ClassVar[str] = "pgps"
    pgps_start_bottleneck: ClassVar[tuple[int, ...] | None] = None
    pgps_multicrop: ClassVar[bool] = False  # performance mode: load planned-batch cases, crop several times
    pgps_safe_instance_norm: ClassVar[bool] = False  # allow a 1-voxel bottleneck (journal modes)
    pgps_oversample: ClassVar[float | None] = 0.5  # official PGPS fixes 0.5; None keeps nnU-Net's 0.33
    pgps_budget_epochs: ClassVar[int | None] = None  # a budget class (``..._250epochs``) fixes the epoch count
    dataloader_train: Any  # nnU-Net's planned-size loader, then a stage's (or None between stages)

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = _CUDA,
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pgps_cpu_threads = pin_cpu_threads(self.device)  # nnU-Net's CLI set the core count (cpu_threads.py)
        if self.pgps_oversample is not None:
            self.oversample_foreground_percent = self.pgps_oversample
        self.pgps_global_oversample = self.oversample_foreground_percent
        cm = self.configuration_manager
        self.pgps_planned_patch = tuple(int(x) for x in cm.patch_size)
        self.pgps_planned_batch = int(cm.batch_size)
        where = f"plans {self.plans_manager.plans_name}, configuration {configuration}"
        strides = cm.network_arch_init_kwargs.get("strides")
        if strides is None:
            raise PGPSError(f"{where}: architecture arch_kwargs has no 'strides'; cannot count poolings per axis")
        self.pgps_poolings = poolings_from_strides(strides, len(self.pgps_planned_patch), where)
        self._pgps_where = where
        knobs = read_knobs()
        if self.pgps_budget_epochs is not None:  # the class's epochs replace PGPS_NUM_EPOCHS (pgps.nnunet.variants)
            knobs = dataclasses.replace(knobs, num_epochs=self.pgps_budget_epochs)
        self.pgps_configure(knobs)
        self.pgps_time_plan: TimePlan | None = None  # PGPS_TIME_BUDGET: measured once, then from the checkpoint
        self.pgps_dry_runs: list[dict] = []
        self._pgps_stage: int | None = None
        self._pgps_tally = ShapeTally()
        self._pgps_phases = PhaseTimes()  # this epoch's time per phase (pgps.nnunet.clock)
        self._pgps_record: RunRecord | None = None
        self._pgps_energy: StageEnergy | None = None
        self._pgps_plot: ThrottledProgressPlot | None = None
        self._pgps_graphed: GraphedTrainStep | None = None  # PGPS_CUDA_GRAPHS=on where available
        self.pgps_cuda_graphs: dict | None = None  # pgps_config.json's cuda_graphs: requested, active, why not

    # ---------------------------------------------------------------- helpers
    def pgps_configure(self, knobs: Knobs) -> None:
        """Everything the PGPS_* knobs decide: seed, epochs, iterations, checkpoint interval, the
        schedule. Called once from ``__init__`` and again by ``load_checkpoint`` when a resumed run
        takes the checkpoint's knobs (``knobs.resume_knobs``), before nnU-Net's ``initialize``."""
        self.pgps_knobs = knobs
        seed_everything(knobs.seed)
        self.num_epochs = knobs.num_epochs
        self.num_iterations_per_epoch = knobs.iters_per_epoch
        self.num_val_iterations_per_epoch = knobs.val_iters
        self.save_every = knobs.save_every
        try:
            self.pgps_schedule: Schedule = build_schedule(
                self.pgps_planned_patch,
                self.pgps_poolings,
                self.num_epochs,
                self.pgps_planned_batch,
                mode=self.pgps_mode,
                seed=knobs.seed,
                start_bottleneck=self.pgps_start_bottleneck,
            )
        except ScheduleError as exc:
            raise PGPSError(f"{self._pgps_where}: {exc}") from None
        scheduler = getattr(self, "lr_scheduler", None)
        if scheduler is not None and hasattr(scheduler, "max_steps"):
            scheduler.max_steps = self.num_epochs  # initialize() already ran: PolyLRScheduler fixed it there

    @property
    def pgps_world(self) -> tuple[int, int]:
        """(world size, rank)."""
        return (dist.get_world_size(), dist.get_rank()) if self.is_ddp else (1, 0)

    def pgps_rank_batch(self, global_batch: int) -> int:
        """This rank's share of a stage batch, split like nnU-Net splits the planned batch."""
        world, rank = self.pgps_world
        return rank_batch_sizes(global_batch, world)[rank]

    def pgps_config(self) -> dict:
        return run_config(self, tracking_mode(self.pgps_world[0]))

    def pgps_augmentation_record(self) -> dict:
        """The record's ``augmentation``: per stage (RPSS: per candidate patch) the regime its
        loader is built with (``PGPS_AUGMENTATION``; pgps.nnunet.augmentation, the same rule)."""
        schedule = self.pgps_schedule
        if schedule.candidates:
            pairs = [(0, c) for c in schedule.candidates]
        else:
            pairs = [(i, st.patch_size) for i, st in enumerate(schedule.stages)]
        return augmentation_record(self.pgps_knobs.augmentation, self.pgps_planned_patch, pairs, rule_for(self))

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
        self._pgps_dry_run()
        super().on_train_start()  # planned-size train + val loaders; the train one is replaced per stage
        finish_loader(self.dataloader_train)
        self.dataloader_train = None
        self._pgps_stage = None
        self._pgps_start_time_budget()
        self._pgps_graphed, self.pgps_cuda_graphs = make_graphed_step(
            self, self.pgps_knobs.cuda_graphs, untracked_forward=self._pgps_count_replayed_step
        )
        if self.local_rank == 0:
            self._pgps_open_record()
        self._pgps_tally.attach(self.network)
        self.print_to_log_file(f"PGPS schedule ({self.pgps_mode}): {json.dumps(self.pgps_schedule.to_dict())}")

    def on_train_epoch_start(self) -> None:
        # per-epoch reseed: a resumed run draws what an uninterrupted one would (single-process loading)
        seed_everything(self.pgps_knobs.seed * 1_000_003 + self.current_epoch)
        index = self.pgps_schedule.stage_index(self.current_epoch)
        if index != self._pgps_stage:
            t0 = time.perf_counter()
            self.pgps_apply_stage(index)
            self._pgps_phases.stage_switch = time.perf_counter() - t0
        if isinstance(self.dataloader_train, PatchSwitch):
            self.dataloader_train.restart(rpss_pick(self.pgps_schedule, self.current_epoch))
        self._pgps_tally.reset()
        super().on_train_epoch_start()

    def on_epoch_end(self) -> None:
        """The epoch's record entry goes to disk BEFORE nnU-Net's checkpoint (pgps.nnunet.record)
        with the time so far, and again once nnU-Net's bookkeeping (checkpoints, plot) is done: the
        epoch ends there (pgps.nnunet.clock). The time budget decides in between (its decision
        must be in the checkpoint)."""
        t0 = time.perf_counter()
        rec = self._pgps_record
        entry = epoch_entry(self, self._pgps_tally, time.time()) if rec is not None else None
        if self.pgps_time_plan is not None:  # every rank: a decision is broadcast under DDP
            self._pgps_follow_time_budget(entry)
        if rec is not None and entry is not None:
            self._pgps_phases.epoch_end = time.perf_counter() - t0
            entry["timing_s"] = self._pgps_phases.as_dict()
            rec.data["epochs"].append(entry)
            self._pgps_update_budget_actuals()
            rec.save()
        super().on_epoch_end()
        if rec is not None and entry is not None:
            entry["epoch_end"] = time.time()
            entry["wall_time"] = entry["epoch_end"] - entry["epoch_start"]
            self._pgps_phases.epoch_end = time.perf_counter() - t0
            entry["timing_s"] = self._pgps_phases.as_dict()
            self._pgps_update_budget_actuals()
            rec.save()

    def run_training(self) -> None:
        """ADAPTED COPY of nnU-Net 2.8.1's loop (pinned by tests/test_nnunet_copies.py) with four
        changes: it re-reads ``num_epochs`` every epoch (``range`` fixes it at the start; the time
        budget's closed loop changes it mid-run); it times the phases of each epoch with
        ``perf_counter`` around the calls it makes anyway (no device sync added: the step time is
        taken at epoch granularity, after ``on_train_epoch_end`` has reduced the losses);
        codecarbon covers exactly the session's epochs; with ``PGPS_CUDA_GRAPHS=on`` (where
        available) the step is the graphed one, its losses brought to the host once per epoch."""
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
                train_outputs.append(self._pgps_step(batch))
            if self._pgps_graphed is not None:
                train_outputs = losses_to_host(train_outputs)
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

    def on_train_end(self) -> None:
        if self._pgps_plot is not None:
            self._pgps_plot.flush()  # the final progress.png shows every epoch
        if self._pgps_graphed is not None and self._pgps_record is not None:
            self._pgps_record.data["cuda_graphs"] = self._pgps_graphed.history + self._pgps_graphed.stats()
            self._pgps_record.save()
        super().on_train_end()
        finish_loader(self.dataloader_train)
        self._pgps_tally.detach()

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

    def save_checkpoint(self, filename: str) -> None:
        checkpoint.save(self, filename)

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """Load without running code from the file (``checkpoint.load_safely``: weights_only, the
        PGPS entry's structure checked); take the run's PGPS_* knobs from the checkpoint (a
        variable set to another value is refused, naming both: ``knobs.resume_knobs``); refuse a
        checkpoint whose curriculum differs; a budgeted run resumes with the plan it started with
        (never re-measured); then nnU-Net's restore (``checkpoint.restore``, an adapted copy)."""
        if isinstance(filename_or_checkpoint, str):
            where = filename_or_checkpoint
            ckpt = checkpoint.load_safely(where)
        else:
            ckpt, where = filename_or_checkpoint, "checkpoint"
            checkpoint.check_structure(ckpt, where)
        knobs = resume_knobs(ckpt["pgps"]["knobs"], where)
        if knobs != self.pgps_knobs:
            self.pgps_configure(knobs)
        plan = checkpoint.saved_time_plan(ckpt, where, self.pgps_knobs.time_budget)
        if plan is not None:
            trainer_glue.apply_plan(self, plan)
        checkpoint.check_schedule(ckpt, where, self.pgps_schedule.to_dict())
        checkpoint.restore(self, ckpt)

    # ---------------------------------------------------------------- the curriculum stage
    def pgps_apply_stage(self, index: int) -> None:
        """THE place where a curriculum stage becomes effective on this rank: the old training
        loader is shut down, the stage's loader (and its augmentation) is built, the rank's batch
        set, codecarbon's stage task started. Per-stage training settings belong here."""
        finish_loader(self.dataloader_train)
        if self._pgps_graphed is not None:
            self._pgps_graphed.clear()  # a stage never comes back: free its graphs
        world, rank = self.pgps_world
        rs = rank_stage(self.pgps_schedule, index, world, rank, self.pgps_global_oversample)
        self.dataloader_train = build_stage_loader(self, rs, self.current_epoch)
        self.batch_size = rs.rank_batch
        self._pgps_stage = index
        if self._pgps_energy is not None:
            self._pgps_energy.enter_stage(rs.name)
        first, last = rs.stage.start_epoch, rs.stage.end_epoch - 1
        self.print_to_log_file(f"PGPS {rs.name}: epochs {first}-{last}, batch/rank {rs.rank_batch}")

    def _pgps_step(self, batch: dict) -> dict:
        """One training step: the graphed one (PGPS_CUDA_GRAPHS=on, CUDA) or nnU-Net's."""
        return self._pgps_graphed(batch) if self._pgps_graphed is not None else self.train_step(batch)

    def _pgps_count_replayed_step(self, data: torch.Tensor) -> None:
        """A graph replay runs no forward hook: count its input shape as the hook would."""
        self._pgps_tally(self.network, (data,))

    # ---------------------------------------------------------------- on_train_start parts
    def _pgps_dry_run(self) -> None:
        mode = self.pgps_knobs.dry_run
        if not (mode == "on" or (mode == "auto" and self.device.type == "cuda")):
            return
        for patch, batch in self.pgps_dry_run_targets():
            seconds = dry_run(self, patch, self.pgps_rank_batch(batch))
            self.pgps_dry_runs.append({"patch_size": list(patch), "batch_size": batch, "seconds": seconds})
            self.print_to_log_file(f"PGPS dry run at patch {list(patch)} x batch {batch}: ok ({seconds:.2f} s)")

    def _pgps_start_time_budget(self) -> None:
        """A fresh budgeted run measures and plans; a resumed one has its plan from the checkpoint."""
        if self.pgps_knobs.time_budget == "off" or self.pgps_time_plan is not None:
            return
        if self.current_epoch != 0:
            raise PGPSError(
                f"{self.output_folder}: resuming at epoch {self.current_epoch}, but the checkpoint holds no "
                f"time-budget plan; unset PGPS_TIME_BUDGET (={self.pgps_knobs.time_budget}) to resume this run"
            )
        p = trainer_glue.make_plan(self)
        trainer_glue.apply_plan(self, p)
        self.print_to_log_file(
            f"PGPS time budget {p.budget_seconds:.1f} s: epochs {p.stage_epochs} at stages {p.stage_indices}, "
            f"predicted {p.predicted_seconds:.1f} s (warm-up {p.warmup_seconds:.1f} s)"
        )
        if p.predicted_seconds > p.budget_seconds:
            self.print_to_log_file(
                f"PGPS time budget {p.budget_seconds:.1f} s cannot hold one epoch at the full patch: "
                "training that one epoch anyway (over budget)"
            )

    def _pgps_open_record(self) -> None:
        """Rank 0: clean up what killed writes left, write the config, open the record, prepare
        codecarbon (started with the first epoch) and the throttled progress plot."""
        remove_partials(self.output_folder)
        config = self.pgps_config()
        fileio.write_json(Path(self.output_folder) / CONFIG_NAME, config)
        self._pgps_record = RunRecord(self.output_folder, self.__class__.__name__, config, self.pgps_schedule.to_dict())
        self._pgps_record.data["augmentation"] = self.pgps_augmentation_record()
        self._pgps_record.start(self.current_epoch)
        if self.pgps_time_plan is not None:
            self._pgps_update_budget_actuals()
            self._pgps_record.save()
        if self.pgps_knobs.codecarbon != "off":
            self._pgps_energy = StageEnergy(
                self.pgps_knobs.codecarbon,
                self.output_folder,
                f"{self.__class__.__name__}_{self.plans_manager.dataset_name}",
                config["codecarbon"]["tracking_mode"],
            )
        # nnU-Net's per-epoch progress.png, at most 2 % of the wall time
        self._pgps_plot = ThrottledProgressPlot()
        self.logger.plot_progress_png = lambda folder: self._pgps_plot.request(self.logger.local_logger, folder)

    # ---------------------------------------------------------------- time budget
    def _pgps_follow_time_budget(self, entry: dict | None) -> None:
        """Closed loop after this epoch (``entry``: its record entry, rank 0 only); a decision goes
        into the schedule, the record and pgps_config.json."""
        rec = self._pgps_record
        entries = [*rec.data["epochs"], entry] if rec is not None and entry is not None else []
        resumed = resumed_epochs(rec.data["resumes"]) if rec is not None else set()
        change = trainer_glue.follow(self, epoch_times(entries), resumed)
        if rec is None or change is None:
            return
        rec.data["schedule"] = self.pgps_schedule.to_dict()
        rec.data["augmentation"] = self.pgps_augmentation_record()
        fileio.write_json(Path(self.output_folder) / CONFIG_NAME, self.pgps_config())
        self.print_to_log_file(
            f"PGPS re-plan after epoch {change.after_epoch} ({change.spent_seconds:.1f} s "
            f"spent): epochs {change.stage_epochs} at stages {change.stage_indices}"
        )

    def _pgps_update_budget_actuals(self) -> None:
        """The record's ``time_budget``: the current plan and the actual seconds per stage."""
        rec, plan = self._pgps_record, self.pgps_time_plan
        if rec is None or plan is None:
            return
        actual = actual_stage_seconds(plan, epoch_times(rec.data["epochs"]), resumed_epochs(rec.data["resumes"]))
        rec.data["time_budget"] = {**plan.to_dict(), "actual_stage_seconds": actual, "actual_seconds": sum(actual)}
