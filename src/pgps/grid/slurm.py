"""Submit the grid to SLURM through submitit: job arrays along DVC's graph, and a final job that records the
results in dvc.lock (`dvc commit`) so `dvc repro` afterwards has nothing left to run.

Few sbatch calls: the stages of one dvc.yaml stage that wait for the same jobs form one array (a task's
trainings wait for its planning), and stages that each wait for one task of an array form an array tied to it
task by task (``aftercorr``: evaluation i starts when training i succeeded, not when all of them did). The
paper's 450-run grid is 25 sbatch calls, not one per run.

Every value that reaches the generated batch script is checked here once more, whatever validated it before:
a newline in a partition name would otherwise become a line of the script (refused, never escaped).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pgps.errors import PGPSError
from pgps.grid.config import GridConfig, Resources
from pgps.grid.dag import Grid, StageJob
from pgps.grid.runner import StageRun, clear_attempts
from pgps.grid.state import save_state

COMMIT_JOB = "dvc-commit"
# what may stand on an `#SBATCH --key=value` line: no whitespace (it would end the line or the option), no quote,
# backslash, $, `, ;, <, >, #, ! and no control character
_SAFE_VALUE = re.compile(r"[^\s'\"\\$`;<>#!\x00-\x1f\x7f]+")
_SAFE_KEY = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True)
class Ref:
    """A dependency on submission ``index``: one of its array tasks, or (``task`` None) all of it."""

    index: int
    task: int | None = None


@dataclass
class Submission:
    """One sbatch call: a single job, or an array of the stages in ``members`` (task i runs member i)."""

    group: str
    members: list[StageJob]
    resources: Resources
    afterok: list[Ref] = field(default_factory=list)
    aftercorr: int | None = None  # task i waits for task i of that submission (an array of the same size)

    @property
    def is_array(self) -> bool:
        return len(self.members) > 1


def plan_submissions(grid: Grid, config: GridConfig, jobs: list[StageJob]) -> list[Submission]:
    """The sbatch calls for ``jobs`` (in dependency order), the final `dvc commit` job last."""
    subs: list[Submission] = []
    where: dict[str, tuple[int, int]] = {}  # stage -> (submission, task)

    def add(group: str, members: list[StageJob], afterok: list[Ref], aftercorr: int | None = None) -> None:
        subs.append(Submission(group, members, config.resources(group), afterok, aftercorr))
        for task, job in enumerate(members):
            where[job.name] = (len(subs) - 1, task)

    def refs(deps: tuple[str, ...] | list[str]) -> list[Ref]:
        """Dependencies as references; all tasks of an array become the array itself (a short sbatch line)."""
        by_sub: dict[int, set[int]] = defaultdict(set)
        for dep in deps:
            index, task = where[dep]
            by_sub[index].add(task)
        out = []
        for index, tasks in sorted(by_sub.items()):
            if len(tasks) == len(subs[index].members):
                out.append(Ref(index))
            else:
                out.extend(Ref(index, t) for t in sorted(tasks))
        return out

    pending = list(jobs)
    while pending:
        ready = [j for j in pending if all(d in where for d in j.deps)]
        if not ready:
            raise PGPSError(f"dvc.yaml: stages wait for each other in a cycle ({', '.join(j.name for j in pending)})")
        buckets: dict[tuple[str, tuple[str, ...]], list[StageJob]] = defaultdict(list)
        for job in ready:
            buckets[(job.group, job.deps)].append(job)
        tied: dict[tuple[str, int], list[StageJob]] = defaultdict(list)  # each waits for one task of an array
        for (group, deps), members in buckets.items():
            if len(members) == 1 and len(deps) == 1 and subs[where[deps[0]][0]].is_array:
                tied[(group, where[deps[0]][0])].append(members[0])
            else:
                add(group, members, refs(deps))
        for (group, upstream), members in tied.items():
            if len(members) == len(subs[upstream].members):  # one per upstream task: an array tied to it
                add(group, sorted(members, key=lambda j: where[j.deps[0]][1]), [], aftercorr=upstream)
            else:
                for job in members:
                    add(group, [job], refs(job.deps))
        pending = [j for j in pending if j.name not in where]
    commit = StageJob(COMMIT_JOB, COMMIT_JOB, commit_command(), str(grid.root), tuple(where), ())
    subs.append(Submission(COMMIT_JOB, [commit], config.default, [Ref(i) for i in range(len(subs))]))
    return subs


def commit_command() -> str:
    return f"{sys.executable} -m dvc commit -f -q && {sys.executable} -m dvc status"


def sbatch_parameters(config: GridConfig, res: Resources, name: str, folder: Path | None = None) -> dict[str, Any]:
    """submitit's parameters for one sbatch call, each checked to be safe on an ``#SBATCH`` line (and the
    job log ``folder``, which lands on the --output/--error lines)."""
    params: dict[str, Any] = {
        "timeout_min": res.time_min,
        "slurm_job_name": f"pgps-{name}",
        "cpus_per_task": res.cpus,
        "mem_gb": res.mem_gb,
        "slurm_signal_delay_s": min(config.signal_delay_s, max(res.time_min * 60 // 2, 1)),
        "slurm_array_parallelism": config.array_parallelism,
        "tasks_per_node": 1,
        "nodes": 1,
    }
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(config, key)
        if value:
            params[f"slurm_{key}"] = value
    if res.gpus > 0:
        if config.gres:
            params["slurm_gres"] = config.gres
        else:
            params["gpus_per_node"] = res.gpus
    params["slurm_additional_parameters"] = config.sbatch_extra_parameters()
    check_batch_script_values(params, folder)
    return params


def check_batch_script_values(params: dict[str, Any], folder: Path | None) -> None:
    """Refuse (never escape) anything that could break out of its ``#SBATCH`` line: the last check before
    submitit writes the script, whatever validated the values before (params.yaml's schema, the flags)."""
    if folder is not None and not _SAFE_VALUE.fullmatch(str(folder)):
        raise PGPSError(f"--folder {str(folder)!r}: job log folder has whitespace, quotes or control characters")
    for key, value in params.items():
        if key != "slurm_additional_parameters":
            _check_value(f"grid.{key.removeprefix('slurm_')}", value)
    for key, value in params.get("slurm_additional_parameters", {}).items():
        if not isinstance(key, str) or not _SAFE_KEY.fullmatch(key):
            raise PGPSError(f"grid.sbatch_extra: {key!r} is not an sbatch option name")
        _check_value(f"grid.sbatch_extra --{key}", value)


def _check_value(name: str, value: Any) -> None:
    if isinstance(value, (bool, int, float)):
        return
    if not isinstance(value, str) or not _SAFE_VALUE.fullmatch(value):
        raise PGPSError(
            f"{name}: {value!r} would not stay on its #SBATCH line (whitespace, quote or control character)"
        )


_parameters = sbatch_parameters  # the old name, still imported by tests/test_grid_config.py


def _executor(folder: Path, max_requeues: int) -> Any:
    import submitit

    try:
        return submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm", slurm_max_num_timeout=max_requeues)
    except RuntimeError as exc:
        raise PGPSError(f"sbatch: SLURM is not available here ({exc})") from None


def dependency(sub: Submission, ids: list[list[str]]) -> str | None:
    """The sbatch --dependency value: afterok on whole arrays or single tasks, aftercorr task by task."""
    parts = []
    if sub.afterok:
        parts.append("afterok:" + ":".join(_ref_id(r, ids) for r in sub.afterok))
    if sub.aftercorr is not None:
        parts.append(f"aftercorr:{_array_id(ids[sub.aftercorr])}")
    return ",".join(parts) or None


def _array_id(task_ids: list[str]) -> str:
    return task_ids[0].split("_", 1)[0]


def _ref_id(ref: Ref, ids: list[list[str]]) -> str:
    return _array_id(ids[ref.index]) if ref.task is None else ids[ref.index][ref.task]


def _submit_one(folder: Path, config: GridConfig, sub: Submission, params: dict[str, Any], after: str | None) -> Any:
    """One sbatch; a fresh executor each time so no request (a GPU, say) leaks into the next."""
    executor = _executor(folder, config.max_requeues)
    extra = dict(params.pop("slurm_additional_parameters"))
    if after:  # a failed dependency leaves its dependents pending, so `pgps grid requeue` can still rescue them
        extra |= {"dependency": after, "kill-on-invalid-dep": "no"}
    executor.update_parameters(**params, slurm_additional_parameters=extra)
    runs = [StageRun(j.name, j.cmd, j.wdir, str(folder)) for j in sub.members]
    try:
        if len(runs) == 1:
            return [executor.submit(runs[0])]
        with executor.batch():
            submitted = [executor.submit(run) for run in runs]
        return submitted
    except Exception as exc:  # submitit raises plain Exceptions carrying sbatch's stderr
        lines = str(exc).strip().splitlines()
        detail = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else repr(exc))
        raise PGPSError(f"sbatch rejected {sub.members[0].name}: {detail.strip()}") from None


def submit_slurm(grid: Grid, config: GridConfig, folder: Path) -> dict[str, Any]:
    """Submit every runnable stage; returns (and saves) the state `pgps grid status` reads."""
    folder = folder.resolve()
    jobs = grid.runnable()
    state: dict[str, Any] = {
        "executor": "slurm",
        "root": str(grid.root),
        "folder": str(folder),
        "submitted": time.time(),
        "jobs": {},
    }
    if not jobs:
        save_state(folder, state)
        return state
    subs = plan_submissions(grid, config, jobs)
    params = [sbatch_parameters(config, s.resources, s.group, folder) for s in subs]  # all checked before any sbatch
    clear_attempts(folder, [j.name for s in subs for j in s.members])
    ids: list[list[str]] = []
    try:
        for sub, p in zip(subs, params, strict=True):
            submitted = _submit_one(folder, config, sub, dict(p), dependency(sub, ids))
            ids.append([s.job_id for s in submitted])
            for job, job_id in zip(sub.members, ids[-1], strict=True):
                state["jobs"][job.name] = {
                    "job_id": job_id,
                    "group": job.group,
                    "deps": list(job.deps),
                    "outs": list(job.outs),
                    "cmd": job.cmd,
                    "resources": asdict(sub.resources),
                }
    except BaseException:
        # no half-submitted grid: what went in before the failure is cancelled again
        submitted_ids = sorted({_array_id(i) for i in ids})
        if submitted_ids:
            subprocess.run(["scancel", *submitted_ids], capture_output=True, timeout=60)
        raise
    save_state(folder, state)
    return state


def describe(subs: list[Submission], config: GridConfig, folder: Path) -> list[str]:
    """The dry run: each stage's request, the sbatch calls with what they wait for, and the totals."""
    lines = []
    for sub in subs[:-1]:
        res = sub.resources
        for job in sub.members:
            after = f" after {', '.join(job.deps)}" if job.deps else ""
            lines.append(f"{job.name}: {res.cpus} cpus, {res.mem_gb:g} GB, {res.gpus} gpus, {res.time_min} min{after}")
    for n, sub in enumerate(subs, 1):
        sbatch_parameters(config, sub.resources, sub.group, folder)  # the same checks as a real submission
        what = sub.members[0].name if not sub.is_array else f"{sub.group} array of {len(sub.members)}"
        waits = []
        if sub.afterok:
            waits.append("afterok " + ", ".join(_ref_label(r, subs) for r in sub.afterok))
        if sub.aftercorr is not None:
            waits.append(f"aftercorr sbatch {sub.aftercorr + 1} (task by task)")
        lines.append(f"sbatch {n}: {what}" + (f" [{'; '.join(waits)}]" if waits else ""))
    tasks = sum(len(s.members) for s in subs)
    arrays = sum(1 for s in subs if s.is_array)
    gpu_h = sum(len(s.members) * s.resources.gpus * s.resources.time_min / 60 for s in subs)
    lines.append(
        f"totals: {len(subs)} sbatch jobs ({arrays} of them job arrays), {tasks} tasks (array tasks + single "
        f"jobs), {gpu_h:,.1f} GPU-hours requested (GPUs x time limit: an upper bound)"
    )
    return lines


def _ref_label(ref: Ref, subs: list[Submission]) -> str:
    if ref.task is None:
        return f"sbatch {ref.index + 1}"
    return subs[ref.index].members[ref.task].name
