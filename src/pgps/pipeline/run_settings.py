"""params.yaml -> every environment variable that changes what an nnU-Net process computes.

nnU-Net's CLI passes no arguments to a trainer, so the budget travels as ``PGPS_*`` variables; nnU-Net and
the math libraries read a few more (``nnUNet_compile``, thread counts, the CPU kernel set). A pipeline run
must depend on params.yaml alone: :func:`run_settings` gives EVERY one of those variables its value from
params (``None``: explicitly unset), derived from the trainers' own list
(:data:`pgps.nnunet.knobs.DEFAULTS`), so a knob added there without a source here fails at once. The same
mapping is the run's identity (``pgps train``'s resume key hashes it) and names the params.yaml keys each
value comes from (a test holds them against the train stage's DVC params).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pgps.errors import PGPSError
from pgps.nnunet.knobs import DEFAULTS
from pgps.params import Params, TrainerSpec
from pgps.schema import CPU_ISA_ENV

RUN = "trainers.<run>"  # stands for the run's own entry in the params keys below


@dataclass(frozen=True)
class Source:
    """Where one variable's value comes from: params keys (dotted) and how to compute it."""

    keys: tuple[str, ...]
    value: Callable[[Params, TrainerSpec], str | None]


def _budget(name: str) -> Source:
    return Source(("budget." + name, f"{RUN}.{name}"), lambda p, run: str(getattr(run.budget, name)))


def _threads(p: Params, _run: TrainerSpec) -> str | None:
    return None if p.runtime["threads"] is None else str(p.runtime["threads"])


def _isa(variable: str) -> Callable[[Params, TrainerSpec], str | None]:
    return lambda p, _run: None if p.runtime["cpu_isa"] is None else CPU_ISA_ENV[p.runtime["cpu_isa"]][variable]


#: the trainers' PGPS_* knobs (every key of knobs.DEFAULTS must be here)
KNOB_SOURCES: dict[str, Source] = {
    "PGPS_NUM_EPOCHS": _budget("epochs"),
    "PGPS_ITERS_PER_EPOCH": Source(
        ("budget.iters_per_epoch", f"{RUN}.iters_per_epoch", f"{RUN}.iters_fraction"),
        lambda p, run: str(run.budget.iters_per_epoch),
    ),
    "PGPS_VAL_ITERS": _budget("val_iters"),
    "PGPS_SEED": Source(("seed",), lambda p, run: str(p.seed)),
    "PGPS_CODECARBON": Source(("codecarbon_country",), lambda p, run: p.codecarbon_country),
    "PGPS_DRY_RUN": _budget("dry_run"),
    "PGPS_SAVE_EVERY": _budget("save_every"),
    "PGPS_TIME_BUDGET": _budget("time_budget"),
    "PGPS_MIN_FULL_SHARE": Source(
        ("budget.min_full_share", f"{RUN}.min_full_share"), lambda p, run: repr(float(run.budget.min_full_share))
    ),
    "PGPS_AUGMENTATION": _budget("augmentation"),
    "PGPS_CUDA_GRAPHS": Source(("runtime.cuda_graphs",), lambda p, run: "on" if p.runtime["cuda_graphs"] else "off"),
}

#: nnU-Net's and the math libraries' run-time variables (None: removed from the environment)
RUNTIME_SOURCES: dict[str, Source] = {
    "nnUNet_compile": Source(("runtime.compile",), lambda p, run: "t" if p.runtime["compile"] else "f"),
    "nnUNet_n_proc_DA": Source(("runtime.da_workers",), lambda p, run: str(p.runtime["da_workers"])),
    "nnUNet_def_n_proc": Source(("plan.num_processes",), lambda p, run: str(p.num_processes)),
    "OMP_NUM_THREADS": Source(("runtime.threads",), _threads),
    "MKL_NUM_THREADS": Source(("runtime.threads",), _threads),
    "OPENBLAS_NUM_THREADS": Source(("runtime.threads",), _threads),
    **{name: Source(("runtime.cpu_isa",), _isa(name)) for name in CPU_ISA_ENV["avx2"]},
}


def knob_env(params: Params, run: TrainerSpec) -> dict[str, str]:
    """Every PGPS_* knob of :data:`DEFAULTS`, valued from params.yaml for ``run``."""
    missing = [name for name in DEFAULTS if name not in KNOB_SOURCES]
    if missing:
        raise PGPSError(f"{missing[0]}: a trainer knob without a params.yaml source (add it to KNOB_SOURCES)")
    return {name: str(KNOB_SOURCES[name].value(params, run)) for name in DEFAULTS}


def runtime_settings(params: Params) -> dict[str, str | None]:
    """nnU-Net's and the math libraries' variables for any nnU-Net command of the pipeline."""
    any_run = next(iter(params.trainers.values()))  # the runtime values do not depend on the run
    return {name: source.value(params, any_run) for name, source in RUNTIME_SOURCES.items()}


def run_settings(params: Params, run: TrainerSpec | None) -> dict[str, str | None]:
    """Everything a process of ``run`` (None: a command outside any run, e.g. planning) depends on."""
    settings: dict[str, str | None] = dict(runtime_settings(params))
    if run is not None:
        settings.update(knob_env(params, run))
    return settings
