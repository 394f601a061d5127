"""The one schema of a params file (``params.yaml``, ``profiles/*.yaml``), its ``grid:`` section included.

Every value is checked for type (strictly: ``2.0`` is not an epoch count, ``"1"`` is not a fold, YAML's
unquoted ``off`` is a boolean and not the word), range (upper bounds too: an absurd value is a typo, and
each bound says why it is where it is) and shape (names match whole strings, so no newline, control
character or NUL byte gets into a DVC stage name or an ``#SBATCH`` line). A problem becomes ONE
:class:`~pgps.errors.PGPSError` line ``<file>: <dotted.key>: <problem>``.

The lists a value must come from are read from their sources, never re-typed here: tasks from the MSD
checksum table and the synthetic generator, trainer classes from the files in ``src/pgps/trainers``
(parsed, not imported: importing them needs torch and nnU-Net).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from pgps.data.catalog import MSD_MD5, TASK_VARIANT
from pgps.errors import PGPSError
from pgps.nnunet.knobs import parse_time_budget
from pgps.trainer_catalog import trainer_modes
from pgps.yamlfile import one_line

# ------------------------------------------------------------------------------------ derived lists
MSD_TASKS: tuple[str, ...] = tuple(MSD_MD5)
SYNTHETIC_TASKS: tuple[str, ...] = tuple(TASK_VARIANT)
KNOWN_TASKS: tuple[str, ...] = MSD_TASKS + SYNTHETIC_TASKS
TRAINER_MODES: dict[str, str] = trainer_modes()
KNOWN_TRAINERS: tuple[str, ...] = tuple(TRAINER_MODES)
BASELINE_TRAINERS: tuple[str, ...] = tuple(n for n, m in TRAINER_MODES.items() if m == "constant")
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")  # nnU-Net's default planner's configurations
DEVICES = ("cpu", "cuda")
DRY_RUN = ("auto", "on", "off")
AUGMENTATION = ("stage", "planned")
NUM_FOLDS = 5  # nnU-Net's default cross-validation split
#: runtime.cpu_isa -> the variables that pin the CPU kernels the math libraries choose by CPU: torch's own
#: (ATen), oneDNN's (convolutions), MKL's (BLAS; CBWR = its reproducible code path) and OpenBLAS's (numpy).
#: The bits of CPU float results depend on that choice; a CPU without the instructions cannot run the pin.
CPU_ISA_ENV: dict[str, dict[str, str]] = {
    "sse41": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "MKL_CBWR": "SSE4_2",
        "OPENBLAS_CORETYPE": "Nehalem",
    },
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "MKL_CBWR": "AVX2",
        "OPENBLAS_CORETYPE": "Haswell",
    },
    "avx512": {
        "ATEN_CPU_CAPABILITY": "avx512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
        "MKL_CBWR": "AVX512",
        "OPENBLAS_CORETYPE": "SkylakeX",
    },
}

# ------------------------------------------------------------------------------------ upper bounds
MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes the seed mod 2**32: a larger seed would repeat a smaller one
MAX_EPOCHS = 100_000  # 100x the paper's 1000 epochs
MAX_ITERS = 1_000_000  # 4000x the paper's 250 iterations per epoch
MAX_PROCESSES = 1024  # worker processes / threads of one job: more than any single node has cores
MAX_BUDGET_S = 366 * 86400  # a time budget of more than a year is a typo
MAX_BUDGET_X = 100.0  # a budget 100x the constant-patch run is no budget
MAX_NAME = 64  # run/profile/stage names become DVC stage names and file names
MAX_CPUS = 4096  # per grid job: more than any node
MAX_GPUS = 64  # per grid job (one node): more than any node
MAX_MEM_GB = 65536.0  # per grid job: 64 TiB, more than any node
MAX_TIME_MIN = 525_600  # a year; SLURM's own limit is INFINITE, a site's far below
MAX_SIGNAL_S = 86_400  # a day before the time limit
MAX_REQUEUES = 10_000
MAX_ARRAY = 1_000_000  # SLURM's MaxArraySize tops out at 4000001
MAX_SLURM_VALUE = 256


def _check(test: Callable[[Any], bool], problem: Callable[[Any], str]) -> AfterValidator:
    """A validator that raises ``problem(value)`` (one line) where ``test`` fails."""

    def checked(value: Any) -> Any:
        if not test(value):
            raise ValueError(problem(value))
        return value

    return AfterValidator(checked)


def show(value: Any) -> str:
    """``repr(value)`` for a one-line message: control characters escaped, long values cut."""
    return one_line(repr(value), 80)


def _at_most(limit: float, why: str) -> AfterValidator:
    shown = int(limit) if float(limit).is_integer() else limit
    return _check(lambda v: v <= limit, lambda v: f"must be <= {shown} ({why}), got {show(v)}")


def _one_of(choices: Sequence[str]) -> AfterValidator:
    return _check(lambda v: v in choices, lambda v: f"must be one of {', '.join(choices)}, got {show(v)}")


def _matches(pattern: str, what: str) -> AfterValidator:
    """Whole-string match (``re.fullmatch``: ``$`` would also match before a trailing newline)."""
    regex = re.compile(pattern)
    return _check(lambda v: regex.fullmatch(v) is not None, lambda v: f"{what}, got {show(v)}")


def _unique(what: str) -> AfterValidator:
    def first_repeat(values: list) -> Any:
        return next(v for i, v in enumerate(values) if v in values[:i])

    return _check(lambda v: len(set(v)) == len(v), lambda v: f"lists {what} {show(first_repeat(v))} twice")


Seed = Annotated[int, Field(ge=0), _at_most(MAX_SEED, "numpy seeds mod 2**32")]
Epochs = Annotated[int, Field(ge=1), _at_most(MAX_EPOCHS, "100x the paper's 1000 epochs")]
Iterations = Annotated[int, Field(ge=1), _at_most(MAX_ITERS, "4000x the paper's 250 iterations")]
Processes = Annotated[int, Field(ge=1), _at_most(MAX_PROCESSES, "more than any node's cores")]
Workers = Annotated[int, Field(ge=0), _at_most(MAX_PROCESSES, "more than any node's cores")]
Share = Annotated[float, Field(ge=0.0, le=1.0)]
Fraction = Annotated[float, _check(lambda v: 0 < v <= 1, lambda v: f"must be a fraction in (0, 1], got {show(v)}")]
RunName = Annotated[
    str,
    _matches(
        rf"[A-Za-z][A-Za-z0-9_]{{0,{MAX_NAME - 1}}}",
        f"run names must be identifiers (letters, digits, _; at most {MAX_NAME}), as they become DVC stage names",
    ),
]
ProfileName = Annotated[
    str, _matches(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_NAME - 1}}}", "must be a non-empty name (letters, digits, _.-)")
]
TaskName = Annotated[
    str, _check(lambda v: v in KNOWN_TASKS, lambda v: f"unknown task {show(v)} (known: {', '.join(KNOWN_TASKS)})")
]
TrainerClass = Annotated[
    str,
    _check(lambda v: v in KNOWN_TRAINERS, lambda v: f"unknown trainer {show(v)} (known: {', '.join(KNOWN_TRAINERS)})"),
]
Fold = Annotated[
    int,
    _check(
        lambda v: 0 <= v < NUM_FOLDS, lambda v: f"invalid fold {show(v)}: nnU-Net's split has folds 0..{NUM_FOLDS - 1}"
    ),
]
Country = Annotated[
    str,
    _check(
        lambda v: v == "off" or re.fullmatch(r"[A-Z]{3}", v) is not None,
        lambda v: f"must be an ISO 3166-1 alpha-3 code such as DEU, or off; got {show(v)}",
    ),
]


def _time_budget(value: str) -> str:
    """``off`` | ``<number>[hms]`` | ``<number>x`` (no spaces), bounded."""
    if not re.fullmatch(r"off|(\d+(\.\d*)?|\.\d+)[hmsx]", value):
        raise ValueError(
            f"must be null, off, a duration such as 2.5h, 90m or 600s, or a fraction such as 0.5x; got {show(value)}"
        )
    if value != "off":  # the upper bounds first, in this file's words; the trainers' parser says the rest
        number, unit = float(value[:-1]), value[-1]
        if unit == "x" and number > MAX_BUDGET_X:
            raise ValueError(f"must be <= {MAX_BUDGET_X:g}x (that is no budget), got {show(value)}")
        if unit != "x" and number * {"h": 3600, "m": 60, "s": 1}[unit] > MAX_BUDGET_S:
            raise ValueError(f"must be <= {MAX_BUDGET_S}s (a year), got {show(value)}")
    try:
        parse_time_budget(value)
    except PGPSError as exc:
        raise ValueError(f"{str(exc).split(': ', 1)[-1]}; got {show(value)}") from None
    return value


TimeBudget = Annotated[str, AfterValidator(_time_budget)]

# --- SLURM: values that land on `#SBATCH --key=value` lines. Whole-string matches; no whitespace, quotes,
# backslash, $, `, ;, <, >, #, ! or control characters, so no value can end the line or be read as more
# than one option. & | ( ) [ ] * stay allowed where SLURM's own syntax needs them (feature expressions).
_SLURM_WORD = r"[A-Za-z0-9_.-]+"
SlurmPartition = Annotated[
    str,
    Field(max_length=MAX_SLURM_VALUE),
    _matches(rf"{_SLURM_WORD}(,{_SLURM_WORD})*", "must be a partition name or a comma-separated list of them"),
]
SlurmName = Annotated[
    str, Field(max_length=MAX_SLURM_VALUE), _matches(_SLURM_WORD, "must be a name of letters, digits, _ . -")
]
SlurmGres = Annotated[
    str,
    Field(max_length=MAX_SLURM_VALUE),
    _matches(
        rf"{_SLURM_WORD}(:{_SLURM_WORD})*(,{_SLURM_WORD}(:{_SLURM_WORD})*)*",
        "must be SLURM gres such as gpu:a100:1 (name[:type]:count, comma-separated)",
    ),
]
SlurmConstraint = Annotated[
    str,
    Field(max_length=MAX_SLURM_VALUE),
    _matches(r"[A-Za-z0-9_.:,*&|()\[\]-]+", "must be a SLURM feature expression (features, & | , * [ ] ( ))"),
]
#: sbatch options the grid sets itself: in grid.sbatch_extra they would silently fight it
SBATCH_OWNED: dict[str, str] = {
    "partition": "use grid.partition",
    "account": "use grid.account",
    "qos": "use grid.qos",
    "gres": "use grid.gres",
    "constraint": "use grid.constraint",
    "cpus-per-task": "use cpus in grid.default/grid.stages",
    "mem": "use mem_gb in grid.default/grid.stages",
    "time": "use time_min in grid.default/grid.stages",
    "gpus-per-node": "use gpus in grid.default/grid.stages",
    "signal": "use grid.signal_delay_s",
    "array": "set by pgps grid (grid.array_parallelism)",
    **{k: "set by pgps grid" for k in ("job-name", "output", "error", "dependency", "kill-on-invalid-dep")},
    **{k: "set by pgps grid" for k in ("nodes", "ntasks-per-node", "open-mode", "wckey", "wrap", "parsable")},
}


def _sbatch_option(value: str) -> str:
    m = re.fullmatch(r"--([a-z][a-z0-9-]*)(=[A-Za-z0-9_.,:@%/+=*&|()\[\]-]+)?", value)
    if m is None:
        raise ValueError(
            "must be one long sbatch option --name or --name=value (no spaces, quotes or shell characters), "
            f"got {show(value)}"
        )
    if m.group(1) in SBATCH_OWNED:
        raise ValueError(f"--{m.group(1)}: {SBATCH_OWNED[m.group(1)]}")
    return value


SbatchOption = Annotated[str, Field(max_length=MAX_SLURM_VALUE), AfterValidator(_sbatch_option)]
StageName = Annotated[str, _matches(rf"[A-Za-z][A-Za-z0-9_-]{{0,{MAX_NAME - 1}}}", "must be a dvc.yaml stage name")]


# ------------------------------------------------------------------------------------ the models
class _Section(BaseModel):
    """Strict: no type coercion, no unknown keys, no NaN/infinity."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class PlanSection(_Section):
    configuration: Annotated[str, _one_of(CONFIGURATIONS)]
    num_processes: Processes  # nnUNet_def_n_proc and the planner's -np/-npfp


class RuntimeSection(_Section):
    compile: bool  # nnUNet_compile
    da_workers: Workers  # nnUNet_n_proc_DA
    cuda_graphs: bool  # PGPS_CUDA_GRAPHS on/off
    threads: Processes | None  # OMP/MKL/OpenBLAS threads; null: not pinned
    cpu_isa: Annotated[str, _one_of(tuple(CPU_ISA_ENV))] | None  # null: not pinned


class BudgetSection(_Section):
    """Shared by every run; each key may be overridden under ``trainers.<run>``."""

    epochs: Epochs
    iters_per_epoch: Iterations
    val_iters: Iterations
    dry_run: Annotated[str, _one_of(DRY_RUN)]
    save_every: Epochs
    time_budget: TimeBudget | None  # null = off
    min_full_share: Share
    augmentation: Annotated[str, _one_of(AUGMENTATION)]


#: the budget keys a run may override under trainers.<run> (plus iters_fraction of the shared iters_per_epoch)
RUN_OVERRIDES: tuple[str, ...] = tuple(BudgetSection.model_fields)


class TrainerEntry(_Section):
    """One named run: a trainer class and any budget key of its own (absent: the shared budget's)."""

    trainer_class: TrainerClass = Field(alias="class")
    # absent = the shared value (default None, not validated); an explicit null is refused like any wrong type
    epochs: Epochs = None
    iters_per_epoch: Iterations = None
    val_iters: Iterations = None
    iters_fraction: Fraction = None
    dry_run: Annotated[str, _one_of(DRY_RUN)] = None
    save_every: Epochs = None
    time_budget: TimeBudget | None = None  # given as null: off; absent: the shared value
    min_full_share: Share = None
    augmentation: Annotated[str, _one_of(AUGMENTATION)] = None

    @field_validator("iters_fraction")
    @classmethod
    def _one_way_to_reduce(cls, value: float, info: ValidationInfo) -> float:
        if info.data.get("iters_per_epoch") is not None:
            raise ValueError("give either iters_per_epoch or iters_fraction, not both")
        return value

    def overrides(self) -> dict[str, Any]:
        """The budget keys this run sets itself (a given time_budget: null included: off)."""
        return {k: getattr(self, k) for k in RUN_OVERRIDES if k in self.model_fields_set}


class EvaluateSection(_Section):
    predict_test: bool
    disable_tta: bool


class ReportSection(_Section):
    alpha: Annotated[
        float, _check(lambda v: 0 < v < 1, lambda v: f"must be a significance level between 0 and 1, got {show(v)}")
    ]
    # did the runs train to convergence? null: decided by the profile (only `full` counts as converged)
    converged: bool | None = None


class ResourcesSpec(_Section):
    """One job's request; an absent key keeps the default request's value."""

    cpus: Annotated[int, Field(ge=1), _at_most(MAX_CPUS, "more than any node")] = None
    mem_gb: Annotated[float, Field(gt=0), _at_most(MAX_MEM_GB, "64 TiB, more than any node")] = None
    gpus: Annotated[int, Field(ge=0), _at_most(MAX_GPUS, "more than any node")] = None
    time_min: Annotated[int, Field(ge=1), _at_most(MAX_TIME_MIN, "a year")] = None


class GridSection(_Section):
    """``pgps grid submit``: what each job asks SLURM for (absent keys: pgps.grid.config's defaults)."""

    partition: SlurmPartition | None = None
    account: SlurmName | None = None
    qos: SlurmName | None = None
    gres: SlurmGres | None = None
    constraint: SlurmConstraint | None = None
    sbatch_extra: Annotated[list[SbatchOption], _unique("the option")] = None
    default: ResourcesSpec | None = None
    stages: dict[StageName, ResourcesSpec | None] = None
    signal_delay_s: Annotated[int, Field(ge=1), _at_most(MAX_SIGNAL_S, "a day")] = None
    max_requeues: Annotated[int, Field(ge=0), _at_most(MAX_REQUEUES, "a job timed out that often will not finish")] = (
        None
    )
    array_parallelism: Annotated[int, Field(ge=1), _at_most(MAX_ARRAY, "SLURM's MaxArraySize tops out at 4000001")] = (
        None
    )


class ParamsFile(_Section):
    """A whole params file; see params.yaml for what each key means."""

    profile: ProfileName
    tasks: Annotated[list[TaskName], Field(min_length=1), _unique("the task")]
    folds: Annotated[list[Fold], Field(min_length=1), _unique("the fold")]
    device: Annotated[str, _one_of(DEVICES)]
    seed: Seed
    codecarbon_country: Country
    plan: PlanSection
    runtime: RuntimeSection
    budget: BudgetSection
    trainers: Annotated[
        dict[RunName, TrainerEntry], _check(lambda v: len(v) > 0, lambda v: "must define at least one run")
    ]
    baseline: str
    evaluate: EvaluateSection
    report: ReportSection
    grid: GridSection | None = None  # `pgps grid` resource requests; no stage reads them

    @field_validator("baseline")
    @classmethod
    def _baseline_is_a_constant_run(cls, value: str, info: ValidationInfo) -> str:
        trainers = info.data.get("trainers")
        if trainers is None:
            return value  # trainers itself failed; that error is the one reported
        if value not in trainers:
            raise ValueError(f"{show(value)} is not one of the runs under trainers ({', '.join(trainers)})")
        if trainers[value].trainer_class not in BASELINE_TRAINERS:
            raise ValueError(f"run {show(value)} must use a constant-patch trainer ({', '.join(BASELINE_TRAINERS)})")
        return value


# ------------------------------------------------------------------------------------ one-line errors
M = TypeVar("M", bound=BaseModel)
_BOOL_HINT = " (YAML reads unquoted on/off/yes/no as true/false: quote the word)"
_PROBLEMS: dict[str, str] = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _unwrap(tp: Any) -> Any:
    """``Annotated[X, ...]`` -> X; ``X | None`` -> X."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _field(model: type[BaseModel], key: Any) -> Any:
    """The annotation of field ``key`` (by alias or name) of ``model``, or None."""
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.annotation
    return None


def _keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _describe(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """``loc`` as a dotted key (``trainers.pgps.class``, ``tasks[0]``) and the model holding its last part."""
    dotted = ""
    tp: Any = model
    parent: type[BaseModel] | None = None
    for item in loc:
        if item == "[key]":
            continue  # the error is about a mapping key, which is already the last part
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if origin in (list, tuple):
            parent, tp = None, typing.get_args(tp)[0]
            dotted += f"[{item}]"
            continue
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            parent, tp = tp, _field(tp, item)
        else:
            parent, tp = None, typing.get_args(tp)[1] if origin is dict else None
        text = str(item)
        name = text if re.fullmatch(r"[A-Za-z0-9_@-]+", text) else show(item)
        dotted = f"{dotted}.{name}" if dotted else name
    return dotted, parent


def explain(exc: ValidationError, model: type[BaseModel]) -> tuple[tuple[Any, ...], str, str]:
    """The first problem of ``exc``: (loc, dotted key, one-line problem). Unknown keys come first: a typo
    (``epochz``) also leaves the real key 'missing', and the typo is what the user must see."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] in ("extra_forbidden", "invalid_key")), errors[0])
    loc = tuple(err["loc"])
    key, parent = _describe(model, loc)
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind in ("extra_forbidden", "invalid_key"):
        allowed = f" (allowed: {', '.join(_keys(parent))})" if parent is not None else ""
        return loc, key, f"unknown key{allowed}"
    if kind == "missing":
        return loc, key, "missing"
    if kind == "value_error":
        return loc, key, one_line(str(ctx.get("error", err["msg"])), 1000)
    if kind in _BOUNDS:
        return loc, key, f"must be {_BOUNDS[kind]} {next(iter(ctx.values()))}, got {show(value)}"
    if kind == "too_short":
        return loc, key, "must not be empty"
    if kind == "too_long":
        return loc, key, f"must be at most {ctx.get('max_length')} long, got {show(value)}"
    problem = _PROBLEMS.get(kind, one_line(err["msg"]))
    hint = _BOOL_HINT if isinstance(value, bool) and kind in ("string_type", "literal_error") else ""
    return loc, key, f"{problem}, got {show(value)}{hint}"


def validate(model: type[M], data: Any, source: str, prefix: str = "") -> M:
    """``data`` checked against ``model``; else a PGPSError ``<source>: <prefix.key>: <problem>``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        _loc, key, problem = explain(exc, model)
        dotted = prefix + key if key.startswith("[") or not prefix or not key else f"{prefix}.{key}"
        raise PGPSError(f"{source}: {dotted}: {problem}" if dotted else f"{source}: {problem}") from None
