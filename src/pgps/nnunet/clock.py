"""The one training clock. Every number about how long a run trained -- the run record's
``clock``, the time budget's spent seconds, its per-stage actuals -- comes from the functions
here, so they cannot disagree. Pure Python (no torch): readers of a run record may import it.

Definition: training wall time = first epoch's start to the last epoch's end, everything between
included (train steps, loader waits, validation, nnU-Net's on_epoch_end: checkpoints, the best
checkpoint, the progress plot, the record). A run killed and resumed with ``--c`` is split into
sessions at every resume; each session counts from its first epoch's start to the end of the
last epoch the checkpoint covers (the record drops later epochs at a resume). The gap between
sessions is reported on its own: ``lost_s`` (epochs the kill threw away, as recorded) and
``dead_s`` (the rest: restart, imports, data, and the unrecorded part of the epoch the kill
interrupted). nnU-Net's final validation is ``final_validation_s``, not training time."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass

DEFINITION = (
    "training wall time = first epoch's start to the last epoch's end, everything between included (train steps, "
    "loader waits, validation, nnU-Net's on_epoch_end: checkpoints, best checkpoint, progress plot, the record); a "
    "resumed run counts each session from its first epoch's start to the end of the last epoch its checkpoint covers; "
    "the gap before a resume is dead_s, recorded work after the last checkpoint of a killed session is lost_s, and "
    "nnU-Net's final validation is final_validation_s, none of them training time"
)
# where an epoch's time goes (seconds per epoch in the record's ``timing_s``); the rest of a
# session's wall time (epoch start hooks, the loop between epochs) is the breakdown's ``other``
PHASES = ("network_steps", "loader_wait", "validation", "epoch_end", "stage_switch")


@dataclass
class PhaseTimes:
    """Seconds one epoch spent in each phase, summed with ``time.perf_counter`` around calls the
    loop makes anyway (no device syncs are added)."""

    network_steps: float = 0.0
    loader_wait: float = 0.0
    validation: float = 0.0
    epoch_end: float = 0.0
    stage_switch: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {p: getattr(self, p) for p in PHASES}


@dataclass(frozen=True)
class EpochTime:
    """One trained epoch on the wall clock (unix seconds); ``end`` is after its on_epoch_end work."""

    epoch: int
    start: float
    end: float


@dataclass(frozen=True)
class Session:
    """One process's share of a run: its first epoch's start to the end of its last kept epoch."""

    first_epoch: int
    last_epoch: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def split_sessions(epochs: Sequence[EpochTime], resumed_at: Collection[int]) -> list[list[EpochTime]]:
    """``epochs`` (in epoch order) cut before every epoch a run resumed at."""
    out: list[list[EpochTime]] = []
    for e in epochs:
        if not out or e.epoch in resumed_at:
            out.append([])
        out[-1].append(e)
    return out


def epoch_spans(epochs: Sequence[EpochTime], resumed_at: Collection[int] = ()) -> list[float]:
    """Training seconds of each epoch: its start to the next epoch's start within a session (the
    loop between two epochs goes to the earlier one), a session's last epoch to its own end. Per
    session they sum exactly to the session's seconds."""
    spans: list[float] = []
    for session in split_sessions(epochs, resumed_at):
        nxt = [e.start for e in session[1:]] + [session[-1].end]
        spans.extend(n - e.start for e, n in zip(session, nxt))
    return spans


def sessions(epochs: Sequence[EpochTime], resumed_at: Collection[int] = ()) -> list[Session]:
    return [
        Session(first_epoch=s[0].epoch, last_epoch=s[-1].epoch, start=s[0].start, end=s[-1].end)
        for s in split_sessions(epochs, resumed_at)
    ]


def train_seconds(epochs: Sequence[EpochTime], resumed_at: Collection[int] = ()) -> float:
    """The training wall time of ``epochs``: the sum over sessions of (end - start)."""
    return sum(s.seconds for s in sessions(epochs, resumed_at))


# ---------------------------------------------------------------- the run record's view
def epoch_times(entries: Sequence[Mapping]) -> list[EpochTime]:
    """The record's epoch entries on the clock."""
    return [EpochTime(int(e["epoch"]), float(e["epoch_start"]), float(e["epoch_end"])) for e in entries]


def resumed_epochs(resumes: Sequence[Mapping]) -> set[int]:
    return {int(r["at_epoch"]) for r in resumes}


def lost_seconds(dropped: Sequence[Mapping]) -> float:
    """Work a kill threw away, as recorded: the spans of the epochs past the checkpoint."""
    return sum(float(e["epoch_end"]) - float(e["epoch_start"]) for e in dropped)


def record_clock(entries: Sequence[Mapping], resumes: Sequence[Mapping], final_validation_s: float | None) -> dict:
    """The record's ``clock``: sessions, training wall time, dead and lost time, and where the
    training time went (``breakdown_s`` sums to ``train_wall_s``; ``other`` is what no phase covers)."""
    resumed = resumed_epochs(resumes)
    times = epoch_times(entries)
    parts = sessions(times, resumed)
    wall = sum(s.seconds for s in parts)
    lost_at: dict[int, float] = {}
    for r in resumes:
        lost_at[int(r["at_epoch"])] = lost_at.get(int(r["at_epoch"]), 0.0) + float(r.get("lost_s") or 0.0)
    # the gap before a session holds the work lost at that resume, the rest is dead (a resume that has
    # not trained an epoch yet has no gap yet)
    dead = sum(b.start - a.end - lost_at.get(b.first_epoch, 0.0) for a, b in zip(parts, parts[1:]))
    breakdown = {p: sum(float(e.get("timing_s", {}).get(p, 0.0)) for e in entries) for p in PHASES}
    breakdown["other"] = wall - sum(breakdown.values())
    return {
        "definition": DEFINITION,
        "train_wall_s": wall,
        "dead_s": dead,
        "lost_s": sum(lost_at.values()),
        "sessions": [asdict(s) for s in parts],
        "breakdown_s": breakdown,
        "final_validation_s": final_validation_s,
    }
