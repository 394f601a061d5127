"""PGPS_TIME_BUDGET end to end on the reduced task (CPU), through nnU-Net's own trainer: the timed
warm-up's plan, corrected by the closed loop (pgps.nnunet.time_budget; the loop itself is tested on
synthetic timelines in test_time_budget_controller.py), drove the schedule the network trained, is
on disk (config, record, checkpoint), and the run met the budget within +-15 % by the one training
clock, in one run that is also killed inside an epoch's bookkeeping and resumes with the plan from
its checkpoint (not re-measured), the killed epoch counted as lost and the time between as dead, not
as training.

The budget is a fraction of the predicted constant-patch run (``0.5x`` of 24 epochs), so it scales
with the machine: on 2 idle cores about 12-18 s of training. The +-15 % check is about the plan;
when the 1-min load average exceeded 1.5x the cores (other processes decided the wall time) it is
an xfail WITH the numbers, never a skip; every structural check runs regardless. The resumed run is
started WITHOUT the PGPS_* variables and takes them from the checkpoint (issue 12.3); an explicit
conflicting value is refused naming both. Knob parsing is tested here too (more in
test_trainer_knobs.py).
Runtime (2 cores, idle): ~1 min (one budgeted training killed and resumed, two refused CLI starts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from pgps.errors import PGPSError
from pgps.nnunet.knobs import read_knobs
from pgps.pipeline import nnunet_cli
from pgps.schedule import ScheduleError, build_schedule
from test_trainer_fixtures import (
    BLOCKED,
    DATASET_ID,
    fold_dir,
    nnunet_env,
    read_record,
    reduced_root,
    run,
    start_until_blocked,
)

KNOBS = {"PGPS_ITERS_PER_EPOCH": "1", "PGPS_VAL_ITERS": "1", "PGPS_SEED": "3", "PGPS_TIME_BUDGET": "0.5x"}
# nnU-Net's own trainer, training only (its final sliding-window validation is not part of the budget);
# "resume" loads checkpoint_latest.pth the way nnUNetv2_train --c does; "block" stops inside epoch 3's
# bookkeeping, after the record's entry and before nnU-Net's checkpoint_latest.pth of that epoch
DRIVER = """
import sys
import torch
if __name__ == "__main__":
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args("{ds}", "3d_fullres", 0, "nnUNetTrainerPGPS", device=torch.device("cpu"))
    if "resume" in sys.argv[1:]:
        trainer.load_checkpoint(trainer.output_folder + "/checkpoint_latest.pth")
    if "block" in sys.argv[1:]:
        save = trainer.save_checkpoint
        def save_or_block(filename):
            if filename.endswith("checkpoint_latest.pth") and trainer.current_epoch == 3:
                print("{blocked} before the checkpoint of epoch 3", flush=True)
                sys.stdin.readline()
            save(filename)
        trainer.save_checkpoint = save_or_block
    trainer.run_training()
"""


def _driver(tmp_path: Path, *args: str) -> list[str]:
    driver = tmp_path / "train_only.py"
    driver.write_text(DRIVER.format(ds=DATASET_ID, blocked=BLOCKED))
    return [sys.executable, str(driver), *args]


def _train_cmd(*extra: str) -> list[str]:
    nnunet = [*nnunet_cli.command("nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0"]  # as the pipeline starts it
    return [*nnunet, "-tr", "nnUNetTrainerPGPS", "-device", "cpu", *extra]


# ---------------------------------------------------------------- knobs and schedule (fast)
@pytest.mark.parametrize(
    ("raw", "normalised"), [("2.5h", "9000s"), ("90m", "5400s"), ("600s", "600s"), ("0.5x", "0.5x"), ("off", "off")]
)
def test_time_budget_knob_normalised(raw: str, normalised: str) -> None:
    assert read_knobs({"PGPS_TIME_BUDGET": raw}).time_budget == normalised
    assert read_knobs({}).time_budget == "off" and read_knobs({}).min_full_share == 0.25


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PGPS_TIME_BUDGET", "2 hours"),
        ("PGPS_TIME_BUDGET", "0x"),
        ("PGPS_TIME_BUDGET", "-5m"),
        ("PGPS_TIME_BUDGET", "600"),
        ("PGPS_MIN_FULL_SHARE", "1.5"),
        ("PGPS_MIN_FULL_SHARE", "nan"),
        ("PGPS_MIN_FULL_SHARE", "a quarter"),
    ],
)
def test_invalid_budget_knobs_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(PGPSError, match=f"^{name}={value!r}: "):
        read_knobs({name: value})


def test_schedule_keeps_chosen_stages() -> None:
    # journal greedy patches of 32^3 (3/3/3): 8^3, 16x8x8, 16x16x8, 16^3, 24x16x16, ..., 32^3 (10 stages);
    # performance batches floor(2 * 32768 / |P_k|): 8^3 -> 128, 24x16x16 (6144) -> 10, 32^3 -> 2
    s = build_schedule(
        (32, 32, 32), (3, 3, 3), 6, 2, mode="performance", stage_epochs=[1, 2, 3], stage_indices=[0, 4, 9]
    )
    assert [(st.patch_size, st.batch_size) for st in s.stages] == [
        ((8, 8, 8), 128),
        ((24, 16, 16), 10),
        ((32, 32, 32), 2),
    ]
    assert [(st.start_epoch, st.end_epoch) for st in s.stages] == [(0, 1), (1, 3), (3, 6)]
    for bad in ([0, 4], [4, 0, 9], [0, 0, 9]):  # must end at full size and rise strictly
        with pytest.raises(ScheduleError, match="stage_indices"):
            build_schedule(
                (32, 32, 32), (3, 3, 3), 6, 2, mode="performance", stage_epochs=[2, 2, 2][: len(bad)], stage_indices=bad
            )


# ---------------------------------------------------------------- real trainings (slow)
@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reduced_root(tmp_path_factory)


class _PeakLoad:
    """Highest 1-min load average seen while a training ran (sampled every 2 s, not a
    synchronisation): the training itself adds ~2; much more means other processes decided the
    wall time, not the plan."""

    def __init__(self) -> None:
        self.max = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(2.0):
            self.max = max(self.max, os.getloadavg()[0])

    def __enter__(self) -> _PeakLoad:
        self.max = os.getloadavg()[0]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.max = max(self.max, os.getloadavg()[0])


def _judge_wall_time(trained: float, budget: float, peak: _PeakLoad, what: str) -> None:
    """+-15 % of the budget by the clock's own numbers; under a foreign load an xfail with the numbers."""
    message = f"{what}: trained {trained:.1f} s for a {budget:.1f} s budget (peak load {peak.max:.1f})"
    print(message)
    if abs(trained - budget) <= 0.15 * budget:
        return
    if peak.max > 1.5 * (os.cpu_count() or 1):
        pytest.xfail(f"{message}: other processes decided the wall time on {os.cpu_count()} cores")
    raise AssertionError(message)


def _stage_of(rec: dict, epoch: int) -> dict:
    return next(s for s in rec["schedule"]["stages"] if s["start_epoch"] <= epoch < s["end_epoch"])


@pytest.mark.slow
def test_budget_plan_drives_the_schedule_survives_a_kill_inside_an_epoch_and_is_met(root: Path, tmp_path: Path) -> None:
    """One budgeted training, SIGKILLed inside epoch 3's bookkeeping and resumed without the PGPS_* variables: the
    timed plan drove the schedule the network trained from the first epoch to the last, the resume took the plan
    from the checkpoint (never re-measured), the clock counted neither the killed epoch nor the gap, and the run
    met the budget. (Two trainings until 2026-12-07, one uninterrupted: every check of both is here, on the run that
    also survived a kill; the uninterrupted closed loop is tested on synthetic timelines.)"""
    results = tmp_path / "results"
    env = nnunet_env(root, results, **KNOBS, PGPS_NUM_EPOCHS="24")
    fold = fold_dir(results, "nnUNetTrainerPGPS")
    proc = start_until_blocked(_driver(tmp_path, "block"), env)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = json.loads((fold / "pgps_config.json").read_text())["time_budget"]
    assert before["num_epochs"] > 4, "the plan must leave epochs to resume"
    assert torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)["current_epoch"] == 3
    assert [e["epoch"] for e in read_record(fold)["epochs"]] == [0, 1, 2, 3]  # epoch 3 recorded, not checkpointed
    no_knobs = {k: v for k, v in env.items() if not k.startswith("PGPS_")}  # --c takes them from the checkpoint
    with _PeakLoad() as peak:
        run(_driver(tmp_path, "resume"), no_knobs, timeout=1800)
    rec = read_record(fold)
    cfg = json.loads((fold / "pgps_config.json").read_text())
    assert cfg["knobs"]["time_budget"] == "0.5x"
    plan, epochs, clock = rec["time_budget"], rec["epochs"], rec["clock"]
    print(
        f"budget {plan['budget_seconds']:.1f} s, predicted {plan['predicted_seconds']:.1f} s, trained "
        f"{clock['train_wall_s']:.1f} s, warm-up {plan['warmup_seconds']:.1f} s, epochs {plan['stage_epochs']} at "
        f"stages {plan['stage_indices']}, per stage actual {[round(x, 1) for x in plan['actual_stage_seconds']]}"
    )
    # from the checkpoint, never re-measured: warm-up timings and the open-loop plan identical
    for key in ("measured", "epoch_seconds", "predicted_seconds", "warmup_seconds", "budget_seconds"):
        assert plan[key] == before[key], key
    # the budget is 0.5 x the predicted constant-patch run of 24 epochs: 12 full-size epochs
    assert plan["budget_seconds"] == pytest.approx(0.5 * 24 * plan["epoch_seconds"][-1])
    assert plan["predicted_seconds"] <= plan["budget_seconds"]
    # the plan replaced PGPS_NUM_EPOCHS and, re-planned across the resume, drove the schedule the network trained
    assert [e["epoch"] for e in epochs] == list(range(plan["num_epochs"])) and plan["num_epochs"] != 24
    assert [s["end_epoch"] - s["start_epoch"] for s in rec["schedule"]["stages"]] == plan["stage_epochs"]
    for e in epochs:
        st = _stage_of(rec, e["epoch"])
        assert e["patch_size"] == st["patch_size"]
        assert e["train_input_shapes"] == [{"shape": [st["batch_size"], 1, *st["patch_size"]], "count": 1}]
    assert rec["schedule"]["stages"][-1]["patch_size"] == [32, 32, 32]
    # closed loop: one decision at every stage change, the full size's share kept while two or more stages
    # were ahead (after the last change the budget alone decides its length). Where the epochs left cannot hold
    # both, every stage ahead keeps its one epoch and the full size gets the rest (split_with_full_share): on a
    # busy machine a re-plan after epoch 1 had 9 epochs for 8 stages, [1] * 7 + [2], against a share of 3.
    replans = plan["replans"]
    changes = [r for r in replans if "per_epoch_correction_seconds" in r]
    assert [r["after_epoch"] for r in changes] == [s["end_epoch"] - 1 for s in rec["schedule"]["stages"][:-1]]
    for r in changes:
        starts = [sum(r["stage_epochs"][:i]) for i in range(len(r["stage_epochs"]))]
        ahead = [e for e, start in zip(r["stage_epochs"], starts) if start > r["after_epoch"]]
        if len(ahead) >= 2:
            share_kept = r["stage_epochs"][-1] >= 0.25 * r["num_epochs"]
            assert share_kept or set(ahead[:-1]) == {1}, r
    assert [r["after_epoch"] for r in replans] == sorted({r["after_epoch"] for r in replans})
    assert all(r["after_epoch"] < plan["num_epochs"] for r in replans)
    # the warm-up measured every stage of the full curriculum, from the 2x1x1 bottleneck to the plan
    measured = plan["measured"]
    assert measured["patch_sizes"][0] == [16, 8, 8] and measured["patch_sizes"][-1] == [32, 32, 32]
    assert len(measured["train_step_seconds"]) == 9 and min(measured["train_step_seconds"]) > 0
    # the same plan in pgps_config.json and the final checkpoint; the poly LR ran over the planned epochs
    assert cfg["time_budget"] == {k: v for k, v in plan.items() if not k.startswith("actual")}
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["pgps"]["time_plan"] == cfg["time_budget"] and ckpt["current_epoch"] == plan["num_epochs"]
    assert epochs[-1]["lr"] < 0.2 * epochs[0]["lr"]
    assert not [p.name for p in fold.iterdir() if p.name.startswith(".")]  # no probe or temp left
    # the clock: two sessions, split at the resume; epoch 3 of the killed session is lost work, the rest of
    # the gap (restart, imports, data) dead; neither is training time, which the budget counted
    (resume,) = rec["resumes"]
    assert (resume["at_epoch"], resume["dropped_epochs"]) == (3, 1) and resume["lost_s"] > 0
    first, second = clock["sessions"]
    assert (first["first_epoch"], first["last_epoch"], second["first_epoch"]) == (0, 2, 3)
    assert first["end"] == epochs[2]["epoch_end"] and second["start"] == epochs[3]["epoch_start"]
    assert clock["lost_s"] == resume["lost_s"]
    assert clock["dead_s"] == pytest.approx(second["start"] - first["end"] - resume["lost_s"]) and clock["dead_s"] > 1
    trained = (first["end"] - first["start"]) + (second["end"] - second["start"])
    assert clock["train_wall_s"] == pytest.approx(trained) == plan["actual_seconds"]
    logs = sorted(fold.glob("training_log_*.txt"))
    assert sum("PGPS time budget" in p.read_text() for p in logs) == 1  # measured in the first run only
    # resuming (nnU-Net's CLI) with an explicit, different budget knob is refused, naming both values
    env_off = {**env, "PGPS_TIME_BUDGET": "off"}
    refused = subprocess.run(_train_cmd("--c"), env=env_off, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0
    assert "PGPS_TIME_BUDGET='off' conflicts with the checkpoint's PGPS_TIME_BUDGET='0.5x'" in refused.stderr
    _judge_wall_time(clock["train_wall_s"], plan["budget_seconds"], peak, "killed and resumed run")


@pytest.mark.slow
def test_invalid_budget_through_nnunet_cli(root: Path, tmp_path: Path) -> None:
    env = nnunet_env(root, tmp_path / "results", **{**KNOBS, "PGPS_TIME_BUDGET": "fast"})
    proc = subprocess.run(_train_cmd(), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "PGPS_TIME_BUDGET='fast': use off, a positive duration such as 2.5h" in proc.stderr
    assert not (fold_dir(tmp_path / "results", "nnUNetTrainerPGPS") / "pgps_config.json").exists()
