"""The grid's jobs, read from the DVC pipeline itself (dvc.yaml resolved against params.yaml).

Every DVC stage becomes one job with the stage's own command, working directory and dependencies, so
the grid can never drift from `dvc repro`: no command or number is written down twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from pgps.errors import PGPSError


@dataclass(frozen=True)
class StageJob:
    """One DVC stage as a job."""

    name: str  # DVC's address, e.g. ``train@Task901_PGPSSynth-pgps-0``
    group: str  # the dvc.yaml stage it was generated from (``train``)
    cmd: str
    wdir: str
    deps: tuple[str, ...]  # names of the stages it waits for
    outs: tuple[str, ...]  # its outputs (absolute paths)
    up_to_date: bool = False  # dvc.lock already matches and nothing upstream runs: nothing to run


@dataclass
class Grid:
    root: Path
    jobs: dict[str, StageJob] = field(default_factory=dict)

    def ordered(self) -> list[StageJob]:
        """Jobs in an order where every job comes after the jobs it waits for."""
        done: set[str] = set()
        order: list[StageJob] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in done:
                return
            if name in path:
                raise PGPSError(f"dvc.yaml: dependency cycle through {' -> '.join(path + (name,))}")
            for dep in self.jobs[name].deps:
                visit(dep, path + (name,))
            done.add(name)
            order.append(self.jobs[name])

        for name in self.jobs:
            visit(name, ())
        return order

    def runnable(self) -> list[StageJob]:
        """The jobs to run: stages that are not up to date and everything downstream of them; their
        dependencies on up-to-date stages are dropped (those outputs are already there)."""
        run: dict[str, StageJob] = {}
        for job in self.ordered():
            live = tuple(d for d in job.deps if d in run)
            if not job.up_to_date or live:
                run[job.name] = replace(job, deps=live)
        return list(run.values())


def _cmd(stage: object) -> str:
    cmd = getattr(stage, "cmd", None)
    if isinstance(cmd, list):
        return " && ".join(cmd)
    return cmd or ""


def load_grid(root: Path, check_status: bool = True) -> Grid:
    """Resolve the DVC pipeline in ``root``; ``check_status`` marks the stages dvc.lock already matches.

    A stage downstream of one that runs runs too (:meth:`Grid.runnable`), so its own status is not asked: DVC
    hashes every dependency of every stage it asks about (~17 source files per training), which made a dry run
    of the paper's grid (931 stages, none run yet) spend most of its time on stages that were certain to run."""
    root = root.resolve()
    if not (root / "dvc.yaml").is_file():
        raise PGPSError(f"{root / 'dvc.yaml'}: not found (run `pgps grid` in the repository root)")
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except DvcException as exc:
        raise PGPSError(f"{root}: not a DVC repository ({exc})") from None
    try:
        repo.lock.lock()
        index = repo.index
        stages = [s for s in index.stages if getattr(s, "cmd", None)]
        graph = index.graph
        groups = {s.addressing: s.addressing.split("@", 1)[0] for s in stages}
        grid = Grid(root=root)
        by_name = {}
        for stage in stages:
            name = stage.addressing
            by_name[name] = stage
            deps = tuple(sorted(d.addressing for d in graph.successors(stage) if getattr(d, "cmd", None)))
            grid.jobs[name] = StageJob(
                name=name,
                group=groups[name],
                cmd=_cmd(stage),
                wdir=str(Path(stage.wdir).resolve()),
                deps=deps,
                outs=tuple(str(Path(o.fs_path).resolve()) for o in stage.outs),
            )
        if check_status:
            for job in grid.ordered():  # upstream first
                upstream_runs = any(not grid.jobs[d].up_to_date for d in job.deps)
                if not upstream_runs and not by_name[job.name].status(check_updates=True):
                    grid.jobs[job.name] = replace(job, up_to_date=True)
    except DvcException as exc:
        raise PGPSError(f"{root / 'dvc.yaml'}: {exc}") from None
    finally:
        if repo.lock.is_locked:
            repo.lock.unlock()
        repo.close()
    return grid
