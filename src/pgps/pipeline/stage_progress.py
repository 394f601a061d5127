"""One line per pipeline stage while `pgps reproduce` runs: its place in the whole and an ETA.

``[7/34] train Task903_PGPSSynthTiny pgps fold 1 | 6 of 34 done in 2:41, ETA 18:52 (~4 min left)``

The ETA comes from the stages finished in this run: a stage is expected to take what the finished stages of
the same run (``train`` of ``pgps``, all folds) took on average, else what its group (``train``) took. Stages
of a group not yet seen are named instead of guessed.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

RUNNING = re.compile(r"^Running stage '([^']+)':")


def describe(stage: str) -> str:
    """``train@Task901_PGPSSynth-pgps-1`` -> ``train Task901_PGPSSynth pgps fold 1``."""
    group, _, item = stage.partition("@")
    parts = item.rsplit("-", 2)
    if group in ("train", "evaluate") and len(parts) == 3 and parts[2].isdigit():
        return f"{group} {parts[0]} {parts[1]} fold {parts[2]}"
    return f"{group} {item}".strip()


def _keys(stage: str) -> tuple[str, str]:
    """(run key, group key): ``train@T-pgps-1`` -> (``train@T-pgps``, ``train``)."""
    group, _, item = stage.partition("@")
    parts = item.rsplit("-", 2)
    run = f"{group}@{parts[0]}-{parts[1]}" if len(parts) == 3 and parts[2].isdigit() else stage
    return run, group


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class StageProgress:
    """Stages as they start and end; ``planned`` are the stages expected to run, ``jobs`` how many run at once.

    With ``jobs=1`` (`dvc repro`, which reports only starts) a stage that starts ends the one before it."""

    planned: list[str]
    jobs: int = 1
    now: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    start: float = field(init=False)
    done: dict[str, float] = field(default_factory=dict)  # finished stage -> seconds
    running: dict[str, float] = field(default_factory=dict)  # running stage -> its start

    def __post_init__(self) -> None:
        self.start = self.now()

    def started(self, stage: str) -> str:
        """``stage`` starts now: its progress line."""
        if self.jobs == 1:
            for previous in list(self.running):
                self.ended(previous)
        if stage not in self.planned:
            self.planned.append(stage)  # DVC decided to run more than planned: count it
        self.running[stage] = self.now()
        position = len(self.done) + len(self.running)
        return f"[{position}/{len(self.planned)}] {describe(stage)} | {self.eta()}"

    def ended(self, stage: str) -> float:
        """``stage`` has ended; its seconds."""
        self.done[stage] = self.now() - self.running.pop(stage)
        return self.done[stage]

    def finished(self) -> float:
        """The pipeline ended (what still runs has ended with it); total seconds."""
        for stage in list(self.running):
            self.ended(stage)
        return self.now() - self.start

    def expected(self, stage: str) -> float | None:
        run, group = _keys(stage)
        same_run = [s for n, s in self.done.items() if _keys(n)[0] == run]
        same_group = [s for n, s in self.done.items() if _keys(n)[1] == group]
        if same_run:
            return statistics.fmean(same_run)
        return statistics.fmean(same_group) if same_group else None

    def eta(self) -> str:
        """Work left (expected seconds of the stages not done, less what the running ones have done) over
        the jobs that share it."""
        elapsed = self.now() - self.start
        head = f"{len(self.done)} of {len(self.planned)} done in {_clock(elapsed)}"
        if not self.done:
            return f"{head}, ETA after the first stage"
        left, unknown = 0.0, []
        for stage in self.planned:
            if stage in self.done:
                continue
            seconds = self.expected(stage)
            if seconds is None:
                group = _keys(stage)[1]
                if group not in unknown:
                    unknown.append(group)
                continue
            if stage in self.running:
                seconds = max(0.0, seconds - (self.now() - self.running[stage]))
            left += seconds
        left /= self.jobs
        finish = time.strftime("%H:%M", time.localtime(self.wall() + left))
        text = f"{head}, ETA {finish} (~{_clock(left)} left"
        return text + (f" + {', '.join(unknown)}: not timed yet)" if unknown else ")")
