"""The one training clock (pgps.nnunet.clock) on timelines built by hand: sessions, spans,
dead and lost time around kills, the per-phase breakdown, and the run record's view of it
(pgps.nnunet.record: the epochs a resume drops become lost time)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgps import fileio
from pgps.nnunet.clock import DEFINITION, PHASES, EpochTime, epoch_spans, record_clock, sessions, train_seconds
from pgps.nnunet.record import RECORD_NAME, RunRecord, record_final_validation


def entry(epoch: int, start: float, end: float, **timing: float) -> dict:
    return {"epoch": epoch, "epoch_start": start, "epoch_end": end, "timing_s": {p: timing.get(p, 0.0) for p in PHASES}}


def test_one_session_counts_first_start_to_last_end_gaps_included() -> None:
    times = [EpochTime(0, 100.0, 109.0), EpochTime(1, 110.0, 120.0), EpochTime(2, 121.0, 130.0)]
    # the loop between epochs (109 -> 110, 120 -> 121) goes to the earlier epoch
    assert epoch_spans(times) == [10.0, 11.0, 9.0]
    assert train_seconds(times) == 30.0
    (only,) = sessions(times)
    assert (only.first_epoch, only.last_epoch, only.start, only.end) == (0, 2, 100.0, 130.0)


def test_a_resume_splits_sessions_and_the_dead_gap_is_not_training() -> None:
    # killed after epoch 2's checkpoint, resumed at epoch 3 eight minutes later
    times = [EpochTime(0, 0.0, 9.0), EpochTime(1, 10.0, 20.0), EpochTime(2, 21.0, 30.0)]
    times += [EpochTime(3, 500.0, 510.0), EpochTime(4, 512.0, 520.0)]
    assert epoch_spans(times, {3}) == [10.0, 11.0, 9.0, 12.0, 8.0]
    assert [(s.first_epoch, s.last_epoch, s.start, s.end) for s in sessions(times, {3})] == [
        (0, 2, 0.0, 30.0),
        (3, 4, 500.0, 520.0),
    ]
    assert train_seconds(times, {3}) == 50.0


def test_record_clock_dead_lost_and_breakdown() -> None:
    entries = [
        entry(0, 0.0, 9.0, network_steps=5.0, loader_wait=1.0, validation=1.5, epoch_end=1.0, stage_switch=0.25),
        entry(1, 10.0, 20.0, network_steps=6.0, loader_wait=1.0, validation=1.5, epoch_end=1.0),
        entry(2, 300.0, 310.0, network_steps=6.0, loader_wait=1.0, validation=1.5, epoch_end=1.0),
    ]
    # the killed session also trained epochs 2 and 3 (12 s recorded) past its checkpoint at epoch 1
    resumes = [{"at_epoch": 2, "time": 295.0, "dropped_epochs": 2, "lost_s": 12.0}]
    clock = record_clock(entries, resumes, final_validation_s=42.0)
    assert clock["definition"] == DEFINITION
    assert clock["train_wall_s"] == 30.0  # (20 - 0) + (310 - 300)
    assert clock["lost_s"] == 12.0
    assert clock["dead_s"] == 300.0 - 20.0 - 12.0
    assert clock["sessions"] == [
        {"first_epoch": 0, "last_epoch": 1, "start": 0.0, "end": 20.0},
        {"first_epoch": 2, "last_epoch": 2, "start": 300.0, "end": 310.0},
    ]
    assert clock["breakdown_s"] == {
        "network_steps": 17.0,
        "loader_wait": 3.0,
        "validation": 4.5,
        "epoch_end": 3.0,
        "stage_switch": 0.25,
        "other": 30.0 - 27.75,
    }
    assert sum(clock["breakdown_s"].values()) == pytest.approx(clock["train_wall_s"])
    assert clock["final_validation_s"] == 42.0


def test_two_kills_at_the_same_checkpoint() -> None:
    # session 2 (resumed at epoch 2) was killed before its first checkpoint: its work is lost too
    entries = [entry(0, 0.0, 10.0), entry(1, 10.0, 20.0), entry(2, 400.0, 410.0)]
    resumes = [
        {"at_epoch": 2, "time": 100.0, "dropped_epochs": 0, "lost_s": 0.0},
        {"at_epoch": 2, "time": 390.0, "dropped_epochs": 1, "lost_s": 10.0},
    ]
    clock = record_clock(entries, resumes, None)
    assert (clock["train_wall_s"], clock["lost_s"], clock["dead_s"]) == (30.0, 10.0, 400.0 - 20.0 - 10.0)
    assert len(clock["sessions"]) == 2


def test_a_resume_without_a_new_epoch_yet_has_no_gap_yet() -> None:
    clock = record_clock([entry(0, 0.0, 10.0)], [{"at_epoch": 1, "time": 50.0, "lost_s": 4.0}], None)
    assert (clock["train_wall_s"], clock["dead_s"], clock["lost_s"]) == (10.0, 0.0, 4.0)


def test_entries_without_timing_put_everything_in_other() -> None:
    clock = record_clock([{"epoch": 0, "epoch_start": 1.0, "epoch_end": 4.0}], [], None)
    assert clock["breakdown_s"]["other"] == 3.0 and clock["breakdown_s"]["network_steps"] == 0.0


def _record(tmp_path: Path) -> RunRecord:
    schedule = {"mode": "pgps", "num_epochs": 4, "stages": [{"patch_size": [8], "start_epoch": 0, "end_epoch": 4}]}
    return RunRecord(tmp_path, "T", {"k": 1}, schedule)


def test_run_record_resume_drops_epochs_past_the_checkpoint_as_lost(tmp_path: Path) -> None:
    rec = _record(tmp_path)
    rec.start(0)
    for e, (a, b) in enumerate([(0.0, 10.0), (10.0, 20.0), (20.0, 27.0)]):
        rec.data["epochs"].append(entry(e, a, b))
        rec.save()
    # a new process resumes from a checkpoint that covers epochs 0 and 1
    resumed = _record(tmp_path)
    resumed.start(2)
    data = fileio.read_json(tmp_path / RECORD_NAME)
    assert [e["epoch"] for e in data["epochs"]] == [0, 1]
    (resume,) = data["resumes"]
    assert (resume["at_epoch"], resume["dropped_epochs"], resume["lost_s"]) == (2, 1, 7.0)
    resumed.data["epochs"].append(entry(2, 100.0, 110.0))
    resumed.save()
    clock = fileio.read_json(tmp_path / RECORD_NAME)["clock"]
    assert (clock["train_wall_s"], clock["lost_s"], clock["dead_s"]) == (30.0, 7.0, 100.0 - 20.0 - 7.0)
    # nnUNetv2_train --val in a later process: the final validation's time lands in the same record
    record_final_validation(tmp_path, 33.5)
    assert fileio.read_json(tmp_path / RECORD_NAME)["clock"]["final_validation_s"] == 33.5
    record_final_validation(tmp_path / "elsewhere", 1.0)  # no record there: nothing written
    assert not (tmp_path / "elsewhere").exists()
