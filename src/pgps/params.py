"""Load and check ``params.yaml``: the one file where the pipeline's numbers live.

Every stage verb reads its numbers through :func:`load_params`, so a typo or an impossible value
(negative epochs, a trainer nnU-Net cannot find, fold 7 of a 5-fold split, a duplicate key) stops the
pipeline before anything expensive runs, with one message naming the file and the key. The rules live in
:mod:`pgps.schema`; this module turns a checked file into what the verbs use: every run with its budget
fully resolved (shared ``budget:`` overridden by ``trainers.<run>``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgps.errors import PGPSError
from pgps.nnunet.knobs import parse_time_budget
from pgps.schema import BudgetSection, ParamsFile, TrainerEntry, validate
from pgps.yamlfile import load_yaml

PARAMS_FILE = Path("params.yaml")


@dataclass(frozen=True)
class RunBudget:
    """What one run may spend and how: epochs x iterations, checkpoints, time budget, augmentation regime.

    (Not the wall-clock time budget alone: that is ``time_budget``, one of its fields.)"""

    epochs: int
    iters_per_epoch: int
    val_iters: int
    dry_run: str  # auto | on | off
    save_every: int  # checkpoint every N epochs
    time_budget: str  # off | "<seconds>s" | "<fraction>x" (the trainer's normal form)
    min_full_share: float  # budgeted runs: least share of the epochs at the full patch
    augmentation: str  # stage | planned


@dataclass(frozen=True)
class TrainerSpec:
    """One named run of the grid: an nnU-Net trainer class and its (possibly reduced) budget."""

    name: str
    trainer_class: str
    budget: RunBudget


@dataclass(frozen=True)
class Params:
    """The validated content of a params file (see ``params.yaml`` for what each key means)."""

    path: Path
    profile: str
    tasks: tuple[str, ...]
    folds: tuple[int, ...]
    device: str
    seed: int
    codecarbon_country: str
    configuration: str
    num_processes: int
    runtime: dict[str, Any]  # compile, da_workers, cuda_graphs, threads (None: unpinned), cpu_isa (None: unpinned)
    budget: RunBudget  # the shared budget
    trainers: dict[str, TrainerSpec]
    baseline: str
    predict_test: bool
    disable_tta: bool
    alpha: float
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def trainer(self, name: str) -> TrainerSpec:
        if name not in self.trainers:
            raise PGPSError(f"{self.path}: trainers: no run named {name!r} (defined: {', '.join(self.trainers)})")
        return self.trainers[name]


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Parse and validate ``path``; raise :class:`PGPSError` naming the file and key on the first problem."""
    path = Path(path)
    tree = load_yaml(path)
    if tree is None:
        raise PGPSError(f"{path}: is empty; it must be a YAML mapping of parameters")
    if not isinstance(tree, dict):
        raise PGPSError(f"{path}: must be a YAML mapping of parameters, got {type(tree).__name__}")
    return parse_params(tree, path)


def _run_budget(shared: BudgetSection | dict[str, Any]) -> RunBudget:
    values = dict(shared) if isinstance(shared, dict) else shared.model_dump()
    values["time_budget"] = parse_time_budget(values["time_budget"] or "off")
    return RunBudget(**values)


def _trainer(name: str, entry: TrainerEntry, shared: BudgetSection) -> TrainerSpec:
    values = shared.model_dump() | entry.overrides()
    if entry.iters_fraction is not None:
        values["iters_per_epoch"] = max(1, round(shared.iters_per_epoch * entry.iters_fraction))
    return TrainerSpec(name, entry.trainer_class, _run_budget(values))


def parse_params(tree: dict[str, Any], path: Path) -> Params:
    """Validate an already-parsed params tree (profiles use the same rules)."""
    checked = validate(ParamsFile, tree, str(path))
    return Params(
        path=path,
        profile=checked.profile,
        tasks=tuple(checked.tasks),
        folds=tuple(checked.folds),
        device=checked.device,
        seed=checked.seed,
        codecarbon_country=checked.codecarbon_country,
        configuration=checked.plan.configuration,
        num_processes=checked.plan.num_processes,
        runtime=checked.runtime.model_dump(),
        budget=_run_budget(checked.budget),
        trainers={name: _trainer(name, entry, checked.budget) for name, entry in checked.trainers.items()},
        baseline=checked.baseline,
        predict_test=checked.evaluate.predict_test,
        disable_tta=checked.evaluate.disable_tta,
        alpha=checked.report.alpha,
        raw=tree,
    )
