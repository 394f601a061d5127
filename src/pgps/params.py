"""Load and check ``params.yaml``: the one file where the pipeline's numbers live.

Every stage verb reads its numbers through :func:`load_params`, so a typo or an impossible value
(negative epochs, a trainer nnU-Net cannot find, fold 7 of a 5-fold split) stops the pipeline before
anything expensive runs, with one message naming the file and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pgps.errors import PGPSError

PARAMS_FILE = Path("params.yaml")

#: the Medical Segmentation Decathlon tasks the paper trains on
MSD_TASKS = (
    "Task01_BrainTumour",
    "Task02_Heart",
    "Task03_Liver",
    "Task04_Hippocampus",
    "Task05_Prostate",
    "Task06_Lung",
    "Task07_Pancreas",
    "Task08_HepaticVessel",
    "Task09_Spleen",
    "Task10_Colon",
)
#: the generated reduced tasks (``pgps make-task``)
SYNTHETIC_TASKS = ("Task901_PGPSSynth", "Task902_PGPSSynthAniso")
KNOWN_TASKS = MSD_TASKS + SYNTHETIC_TASKS

#: trainer classes that live in ``src/pgps/trainers`` (plus nnU-Net's own default)
KNOWN_TRAINERS = (
    "nnUNetTrainer",
    "nnUNetTrainerConstant",
    "nnUNetTrainerPGPS",
    "nnUNetTrainerPGPSPlus",
    "nnUNetTrainerRPSS",
    "nnUNetTrainerPGPSEfficiency",
    "nnUNetTrainerPGPSPerformance",
)
BASELINE_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerConstant")
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
DEVICES = ("cpu", "cuda")
DRY_RUN = ("auto", "on", "off")
NUM_FOLDS = 5  # nnU-Net's default cross-validation split
_RUN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # '-' and '@' are DVC's stage-name separators
_COUNTRY = re.compile(r"^[A-Z]{3}$")

TOP_LEVEL_KEYS = (
    "profile",
    "tasks",
    "folds",
    "device",
    "seed",
    "codecarbon_country",
    "plan",
    "runtime",
    "budget",
    "trainers",
    "baseline",
    "evaluate",
    "report",
    "grid",  # `pgps grid` resource requests; validated by pgps.grid.config (no stage reads it)
)


@dataclass(frozen=True)
class Budget:
    """Training budget handed to the trainers as ``PGPS_*`` environment variables."""

    epochs: int
    iters_per_epoch: int
    val_iters: int


@dataclass(frozen=True)
class TrainerSpec:
    """One named run of the grid: an nnU-Net trainer class and its (possibly reduced) budget."""

    name: str
    trainer_class: str
    budget: Budget


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
    runtime: dict[str, Any]
    budget: Budget
    dry_run: str
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


class _Checker:
    """Reads typed values out of the YAML tree; every failure names the file and the dotted key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> PGPSError:
        return PGPSError(f"{self.path}: {key}: {problem}")

    def mapping(self, tree: dict, key: str, prefix: str = "", allowed: tuple[str, ...] | None = None) -> dict:
        value = self.required(tree, key, prefix)
        if not isinstance(value, dict):
            raise self.fail(f"{prefix}{key}", f"must be a mapping, got {type(value).__name__}")
        if allowed is not None:
            unknown = sorted(set(value) - set(allowed))
            if unknown:
                raise self.fail(f"{prefix}{key}.{unknown[0]}", f"unknown key (allowed: {', '.join(allowed)})")
        return value

    def required(self, tree: dict, key: str, prefix: str = "") -> Any:
        if key not in tree:
            raise self.fail(f"{prefix}{key}", "missing")
        return tree[key]

    def integer(self, tree: dict, key: str, prefix: str = "", minimum: int | None = None) -> int:
        value = self.required(tree, key, prefix)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{prefix}{key}", f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(f"{prefix}{key}", f"must be >= {minimum}, got {value}")
        return value

    def boolean(self, tree: dict, key: str, prefix: str = "") -> bool:
        value = self.required(tree, key, prefix)
        if not isinstance(value, bool):
            raise self.fail(f"{prefix}{key}", f"must be true or false, got {value!r}")
        return value

    def choice(self, tree: dict, key: str, choices: tuple[str, ...], prefix: str = "") -> str:
        value = self.required(tree, key, prefix)
        if value not in choices:
            raise self.fail(f"{prefix}{key}", f"must be one of {', '.join(choices)}, got {value!r}")
        return value


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Parse and validate ``path``; raise :class:`PGPSError` naming the file and key on the first problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PGPSError(f"{path}: not found (run from the repository root, or pass --params)") from None
    except OSError as exc:
        raise PGPSError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise PGPSError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(tree, dict):
        raise PGPSError(f"{path}: must be a YAML mapping of parameters, got {type(tree).__name__}")
    return parse_params(tree, path)


def parse_params(tree: dict[str, Any], path: Path) -> Params:
    """Validate an already-parsed params tree (profiles use the same rules)."""
    c = _Checker(path)
    unknown = sorted(set(tree) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise c.fail(unknown[0], f"unknown key (allowed: {', '.join(TOP_LEVEL_KEYS)})")

    profile = c.required(tree, "profile")
    if not isinstance(profile, str) or not profile:
        raise c.fail("profile", f"must be a non-empty name, got {profile!r}")

    tasks = c.required(tree, "tasks")
    if not isinstance(tasks, list) or not tasks:
        raise c.fail("tasks", "must be a non-empty list of task names")
    for i, task in enumerate(tasks):
        if task not in KNOWN_TASKS:
            raise c.fail(f"tasks[{i}]", f"unknown task {task!r} (known: {', '.join(KNOWN_TASKS)})")
    if len(set(tasks)) != len(tasks):
        raise c.fail("tasks", "lists a task twice")

    folds = c.required(tree, "folds")
    if not isinstance(folds, list) or not folds:
        raise c.fail("folds", f"must be a non-empty list of fold numbers 0..{NUM_FOLDS - 1}")
    for i, fold in enumerate(folds):
        if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < NUM_FOLDS:
            raise c.fail(f"folds[{i}]", f"invalid fold {fold!r}: nnU-Net's split has folds 0..{NUM_FOLDS - 1}")
    if len(set(folds)) != len(folds):
        raise c.fail("folds", "lists a fold twice")

    device = c.choice(tree, "device", DEVICES)
    seed = c.integer(tree, "seed", minimum=0)
    country = c.required(tree, "codecarbon_country")
    if country != "off" and not (isinstance(country, str) and _COUNTRY.match(country)):
        raise c.fail("codecarbon_country", f"must be an ISO 3166-1 alpha-3 code such as DEU, or off; got {country!r}")

    plan = c.mapping(tree, "plan", allowed=("configuration", "num_processes"))
    configuration = c.choice(plan, "configuration", CONFIGURATIONS, "plan.")
    num_processes = c.integer(plan, "num_processes", "plan.", minimum=1)

    runtime = c.mapping(tree, "runtime", allowed=("compile", "da_workers"))
    c.boolean(runtime, "compile", "runtime.")
    c.integer(runtime, "da_workers", "runtime.", minimum=0)

    budget_tree = c.mapping(tree, "budget", allowed=("epochs", "iters_per_epoch", "val_iters", "dry_run"))
    budget = Budget(
        epochs=c.integer(budget_tree, "epochs", "budget.", minimum=1),
        iters_per_epoch=c.integer(budget_tree, "iters_per_epoch", "budget.", minimum=1),
        val_iters=c.integer(budget_tree, "val_iters", "budget.", minimum=1),
    )
    dry_run = c.choice(budget_tree, "dry_run", DRY_RUN, "budget.")

    trainers_tree = c.mapping(tree, "trainers")
    if not trainers_tree:
        raise c.fail("trainers", "must define at least one run")
    trainers = {name: _trainer(c, name, spec, budget) for name, spec in trainers_tree.items()}

    baseline = c.required(tree, "baseline")
    if baseline not in trainers:
        raise c.fail("baseline", f"{baseline!r} is not one of the runs under trainers ({', '.join(trainers)})")
    if trainers[baseline].trainer_class not in BASELINE_TRAINERS:
        raise c.fail("baseline", f"run {baseline!r} must use a constant-patch trainer ({', '.join(BASELINE_TRAINERS)})")

    evaluate = c.mapping(tree, "evaluate", allowed=("predict_test", "disable_tta"))
    report = c.mapping(tree, "report", allowed=("alpha",))
    alpha = c.required(report, "alpha", "report.")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise c.fail("report.alpha", f"must be a significance level between 0 and 1, got {alpha!r}")

    if "grid" in tree:
        from pgps.grid.config import parse_grid_section

        parse_grid_section(tree["grid"], where=f"{path}: grid")

    return Params(
        path=path,
        profile=profile,
        tasks=tuple(tasks),
        folds=tuple(folds),
        device=device,
        seed=seed,
        codecarbon_country=country,
        configuration=configuration,
        num_processes=num_processes,
        runtime=dict(runtime),
        budget=budget,
        dry_run=dry_run,
        trainers=trainers,
        baseline=baseline,
        predict_test=c.boolean(evaluate, "predict_test", "evaluate."),
        disable_tta=c.boolean(evaluate, "disable_tta", "evaluate."),
        alpha=float(alpha),
        raw=tree,
    )


def _trainer(c: _Checker, name: Any, spec: Any, budget: Budget) -> TrainerSpec:
    """One entry of ``trainers``: ``{class: ..., [epochs|iters_per_epoch|val_iters|iters_fraction]: ...}``."""
    key = f"trainers.{name}"
    if not isinstance(name, str) or not _RUN_NAME.match(name):
        raise c.fail(key, "run names must be identifiers (letters, digits, _), as they become DVC stage names")
    if not isinstance(spec, dict):
        raise c.fail(key, f"must be a mapping with at least 'class', got {spec!r}")
    allowed = ("class", "epochs", "iters_per_epoch", "val_iters", "iters_fraction")
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise c.fail(f"{key}.{unknown[0]}", f"unknown key (allowed: {', '.join(allowed)})")
    cls = c.required(spec, "class", f"{key}.")
    if cls not in KNOWN_TRAINERS:
        raise c.fail(f"{key}.class", f"unknown trainer {cls!r} (known: {', '.join(KNOWN_TRAINERS)})")
    epochs = c.integer(spec, "epochs", f"{key}.", minimum=1) if "epochs" in spec else budget.epochs
    iters = c.integer(spec, "iters_per_epoch", f"{key}.", minimum=1) if "iters_per_epoch" in spec else None
    val_iters = c.integer(spec, "val_iters", f"{key}.", minimum=1) if "val_iters" in spec else budget.val_iters
    if "iters_fraction" in spec:
        if iters is not None:
            raise c.fail(f"{key}.iters_fraction", "give either iters_per_epoch or iters_fraction, not both")
        fraction = spec["iters_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise c.fail(f"{key}.iters_fraction", f"must be a fraction in (0, 1], got {fraction!r}")
        iters = max(1, round(budget.iters_per_epoch * fraction))
    return TrainerSpec(name, cls, Budget(epochs, iters if iters is not None else budget.iters_per_epoch, val_iters))
