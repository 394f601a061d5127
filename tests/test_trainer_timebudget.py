"""PGPS_TIME_BUDGET end to end on the reduced task (CPU): the timed warm-up's plan, corrected in a
closed loop (a re-plan at every stage change, full-size epochs counted from their measured
length), meets the budget within +-15 %; the plan is on disk (config, record, checkpoint); a run
killed mid-curriculum resumes with the plan from its checkpoint (not re-measured); bad knob values
give one clear error. The wall-time check is skipped (with the numbers) when the 1-min load
average exceeds 1.5x the cores: other processes then decide the wall time, not the plan.
Runtime (2 cores, idle): unit part < 5 s; slow part ~5 min (the 150 s budget, the 30 s resume, data prep)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pgps.errors import PGPSError
from pgps.nnunet.knobs import read_knobs
from pgps.nnunet.timebudget import affine_fit, plot_seconds_per_epoch
from pgps.schedule import ScheduleError, build_schedule
from test_trainer_fixtures import BIN, DATASET_ID, fold_dir, nnunet_env, read_record, reduced_root, run

BUDGET_S = 150.0  # issue 7: "a budget of a few minutes"; the resume test below takes 30 s
KNOBS = {"PGPS_NUM_EPOCHS": "10", "PGPS_ITERS_PER_EPOCH": "1", "PGPS_VAL_ITERS": "1", "PGPS_SEED": "3"}
# nnU-Net's own trainer, training only: its final sliding-window validation is not part of the budget
# and costs ~40 s here; "resume" loads checkpoint_latest.pth the way nnUNetv2_train --c does
DRIVER = """
import sys
import torch
if __name__ == "__main__":
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args("{ds}", "3d_fullres", 0, "nnUNetTrainerPGPS", device=torch.device("cpu"))
    if sys.argv[1:] == ["resume"]:
        trainer.load_checkpoint(trainer.output_folder + "/checkpoint_latest.pth")
    trainer.run_training()
"""


def _driver(tmp_path: Path) -> list[str]:
    driver = tmp_path / "train_only.py"
    driver.write_text(DRIVER.format(ds=DATASET_ID))
    return [sys.executable, str(driver)]


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
    full = build_schedule((32, 32, 32), (3, 3, 3), 1000, 2, mode="performance")
    s = build_schedule(
        (32, 32, 32), (3, 3, 3), 6, 2, mode="performance", stage_epochs=[1, 2, 3], stage_indices=[0, 4, 9]
    )
    assert [st.patch_size for st in s.stages] == [full.stages[i].patch_size for i in (0, 4, 9)]
    assert [st.batch_size for st in s.stages] == [full.stages[i].batch_size for i in (0, 4, 9)]
    assert [(st.start_epoch, st.end_epoch) for st in s.stages] == [(0, 1), (1, 3), (3, 6)]
    for bad in ([0, 4], [4, 0, 9], [0, 0, 9]):  # must end at full size and rise strictly
        with pytest.raises(ScheduleError, match="stage_indices"):
            build_schedule(
                (32, 32, 32), (3, 3, 3), 6, 2, mode="performance", stage_epochs=[2, 2, 2][: len(bad)], stage_indices=bad
            )


def test_affine_fit_smooths_one_outlier_and_falls_back() -> None:
    voxels = [100, 200, 300, 400, 500]
    fitted = affine_fit(voxels, [1.1, 1.2, 5.0, 1.4, 1.5])  # stage 2 measured while the cores were busy
    assert fitted[2] < 3.0 and all(b >= a for a, b in zip(fitted, fitted[1:]))
    assert affine_fit(voxels, [1.1, 1.2, 1.3, 1.4, 1.5]) == pytest.approx([1.1, 1.2, 1.3, 1.4, 1.5])
    assert affine_fit([100, 200], [1.0, 3.0]) == [1.0, 3.0]  # too few points: raw numbers
    assert affine_fit(voxels, [5.0, 4.0, 3.0, 2.0, 1.0]) == [5.0, 4.0, 3.0, 2.0, 1.0]  # falling: raw numbers


# ---------------------------------------------------------------- real trainings (slow)
@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reduced_root(tmp_path_factory)


class _PeakLoad:
    """Highest 1-min load average seen while the training ran (sampled every 2 s): the training
    itself adds ~2; much more means other processes decided the wall time, not the plan."""

    def __init__(self) -> None:
        self.max = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(2.0):
            self.max = max(self.max, os.getloadavg()[0])

    def __enter__(self) -> _PeakLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.max = max(self.max, os.getloadavg()[0])


def _stage_of(rec: dict, epoch: int) -> dict:
    return next(s for s in rec["schedule"]["stages"] if s["start_epoch"] <= epoch < s["end_epoch"])


@pytest.mark.slow
def test_budget_is_met_and_plan_recorded(root: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    env = nnunet_env(root, results, **KNOBS, PGPS_TIME_BUDGET=f"{BUDGET_S:g}s", PGPS_DRY_RUN="on")
    peak = _PeakLoad()
    with peak:
        run(_driver(tmp_path), env, timeout=900)
    fold = fold_dir(results, "nnUNetTrainerPGPS")
    rec = read_record(fold)
    plan = rec["time_budget"]
    epochs = rec["epochs"]
    actual = epochs[-1]["epoch_end"] - epochs[0]["epoch_start"]
    print(
        f"budget {BUDGET_S} s, predicted {plan['predicted_seconds']:.1f} s, actual {actual:.1f} s, "
        f"warm-up {plan['warmup_seconds']:.1f} s, epochs {plan['stage_epochs']} at stages {plan['stage_indices']}, "
        f"per stage predicted {[round(x, 1) for x in plan['predicted_stage_seconds']]} "
        f"actual {[round(x, 1) for x in plan['actual_stage_seconds']]}, full-size share "
        f"{plan['stage_epochs'][-1] / plan['num_epochs']:.3f}"
    )
    assert plan["actual_seconds"] == pytest.approx(actual)
    assert plan["budget_seconds"] == BUDGET_S and plan["predicted_seconds"] <= BUDGET_S
    # the plan replaced PGPS_NUM_EPOCHS and drove the schedule the network actually trained
    assert [e["epoch"] for e in epochs] == list(range(plan["num_epochs"])) and plan["num_epochs"] != 10
    assert [s["end_epoch"] - s["start_epoch"] for s in rec["schedule"]["stages"]] == plan["stage_epochs"]
    # closed loop: every stage change re-planned the rest (keeping the full size's share), and the
    # full-size stage's length was decided from its measured epochs
    replans = plan["replans"]
    changes = [r for r in replans if "per_epoch_correction_seconds" in r]
    stage_ends = [s["end_epoch"] - 1 for s in rec["schedule"]["stages"][:-1]]
    assert [r["after_epoch"] for r in changes] == stage_ends  # one decision at every stage change
    assert all(r["after_epoch"] < plan["num_epochs"] for r in replans)
    for r in changes:
        # the full size's share is planned while two or more stages are still ahead; once only the full
        # size is left, the budget alone decides its length (the share is a plan, the budget a promise)
        starts = [sum(r["stage_epochs"][:i]) for i in range(len(r["stage_epochs"]))]
        if sum(start > r["after_epoch"] for start in starts) >= 2:
            assert r["stage_epochs"][-1] >= 0.25 * r["num_epochs"] or set(r["stage_epochs"]) == {1}, r
    assert [r["after_epoch"] for r in replans] == sorted({r["after_epoch"] for r in replans})
    assert rec["schedule"]["stages"][-1]["patch_size"] == [32, 32, 32]
    for e in epochs:
        st = _stage_of(rec, e["epoch"])
        assert e["train_input_shapes"] == [{"shape": [st["batch_size"], 1, *st["patch_size"]], "count": 1}]
    starts = [e["epoch_start"] for e in epochs] + [epochs[-1]["epoch_end"]]
    spans = [(e["stage"], starts[i + 1] - starts[i]) for i, e in enumerate(epochs)]
    per_stage = [sum(t for k, t in spans if k == s) for s in range(len(plan["stage_epochs"]))]
    assert plan["actual_stage_seconds"] == pytest.approx(per_stage)
    assert sum(per_stage) == pytest.approx(actual)
    # warm-up measured every stage of the full curriculum, the first one the 2x1x1 bottleneck
    measured = plan["measured"]
    assert measured["patch_sizes"][0] == [16, 8, 8] and measured["patch_sizes"][-1] == [32, 32, 32]
    assert (
        len(measured["train_step_seconds"]) == len(measured["patch_sizes"]) and min(measured["train_step_seconds"]) > 0
    )
    # the same plan in pgps_config.json and the final checkpoint; the poly LR ran over the planned epochs
    cfg = json.loads((fold / "pgps_config.json").read_text())
    assert cfg["time_budget"] == {k: v for k, v in plan.items() if not k.startswith("actual")}
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["pgps"]["time_plan"] == cfg["time_budget"] and ckpt["current_epoch"] == plan["num_epochs"]
    assert epochs[-1]["lr"] < 0.2 * epochs[0]["lr"]  # poly decay over num_epochs planned, not 10
    assert not list(fold.glob(".pgps_budget_probe_*"))
    # the +-15 % promise is about the plan, not about other processes taking the cores mid-run
    if peak.max > 1.5 * (os.cpu_count() or 1):
        pytest.skip(f"peak load average {peak.max:.1f} on {os.cpu_count()} cores: wall time {actual:.1f} s not judged")
    assert abs(actual - BUDGET_S) <= 0.15 * BUDGET_S, (
        f"training took {actual:.1f} s for a {BUDGET_S} s budget (open-loop prediction "
        f"{plan['predicted_seconds']:.1f} s, re-plans {replans})"
    )


def _train_cmd(*extra: str) -> list[str]:
    return [
        str(BIN / "nnUNetv2_train"),
        str(DATASET_ID),
        "3d_fullres",
        "0",
        "-tr",
        "nnUNetTrainerPGPS",
        "-device",
        "cpu",
        *extra,
    ]


@pytest.mark.slow
def test_resume_after_kill_keeps_the_plan(root: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    env = nnunet_env(root, results, **KNOBS, PGPS_TIME_BUDGET="30s")
    fold = fold_dir(results, "nnUNetTrainerPGPS")
    proc = subprocess.Popen(_driver(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if (fold / "pgps_record.json").is_file() and len(read_record(fold)["epochs"]) >= 2:
                break
            time.sleep(0.5)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = json.loads((fold / "pgps_config.json").read_text())["time_budget"]
    assert before["num_epochs"] > 2, "the plan must leave epochs to resume"
    peak = _PeakLoad()
    with peak:
        run([*_driver(tmp_path), "resume"], env, timeout=900)
    rec = read_record(fold)
    after = json.loads((fold / "pgps_config.json").read_text())["time_budget"]
    # from the checkpoint, never re-measured: warm-up timings and the open-loop plan identical
    for key in ("measured", "epoch_seconds", "predicted_seconds", "warmup_seconds", "budget_seconds"):
        assert after[key] == before[key], key
    assert rec["resumes"] and rec["resumes"][0]["at_epoch"] >= 1
    # the resumed run went on re-planning; what it trained is its final plan
    assert [e["epoch"] for e in rec["epochs"]] == list(range(after["num_epochs"]))
    assert [s["end_epoch"] - s["start_epoch"] for s in rec["schedule"]["stages"]] == after["stage_epochs"]
    # the budget counts training time: the time the run lay dead after the kill (from the end of the last
    # epoch the checkpoint covers to the first resumed epoch's start: restart, imports, data) is not spent
    at = rec["resumes"][0]["at_epoch"]
    dead = rec["epochs"][at]["epoch_start"] - rec["epochs"][at - 1]["epoch_end"]
    wall = rec["epochs"][-1]["epoch_end"] - rec["epochs"][0]["epoch_start"]
    trained = rec["time_budget"]["actual_seconds"]
    print(f"resumed at epoch {at}: trained {trained:.1f} s of 30 s, wall {wall:.1f} s, dead {dead:.1f} s")
    assert dead > 1.0 and trained == pytest.approx(wall - dead), (wall, dead, trained)
    if peak.max <= 1.5 * (os.cpu_count() or 1):
        assert abs(trained - 30.0) <= 0.15 * 30.0, f"resumed run trained {trained:.1f} s for a 30 s budget"
    for e in rec["epochs"]:
        st = _stage_of(rec, e["epoch"])
        assert e["patch_size"] == st["patch_size"]
    logs = sorted(fold.glob("training_log_*.txt"))
    assert sum("PGPS time budget" in p.read_text() for p in logs) == 1  # measured in the first run only
    # resuming (nnU-Net's CLI) without the budget knob is refused with one clear message
    env_off = {k: v for k, v in env.items() if k != "PGPS_TIME_BUDGET"}
    proc2 = subprocess.run(_train_cmd("--c"), env=env_off, capture_output=True, text=True, timeout=300)
    assert proc2.returncode != 0
    assert "was trained with PGPS_TIME_BUDGET=30s; set it again to resume" in proc2.stderr


@pytest.mark.slow
def test_invalid_budget_through_nnunet_cli(root: Path, tmp_path: Path) -> None:
    env = nnunet_env(root, tmp_path / "results", **KNOBS, PGPS_TIME_BUDGET="fast")
    proc = subprocess.run(_train_cmd(), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "PGPS_TIME_BUDGET='fast': use off, a positive duration such as 2.5h" in proc.stderr
    assert not (fold_dir(tmp_path / "results", "nnUNetTrainerPGPS") / "pgps_config.json").exists()


def test_plot_cost_per_epoch_follows_the_throttle() -> None:
    assert plot_seconds_per_epoch(0.6, 100.0) == pytest.approx(0.6)  # long epochs: a draw every epoch
    assert plot_seconds_per_epoch(0.6, 1.0) == pytest.approx(0.02 / 0.98)  # short ones: 2 % of the wall time
