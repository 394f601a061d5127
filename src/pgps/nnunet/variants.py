"""PGPS on top of any nnU-Net trainer (one of nnU-Net's variants or a lab's own), and epoch budgets
as classes whose name says the budget (nnU-Net's ``nnUNetTrainer_250epochs`` convention), so two
budgets never share a results folder (nnU-Net names the folder after the class).

Two spellings of one composition (README "PGPS on your own trainer"):

    nnUNetTrainerPGPS_Lab = pgps_trainer(LabTrainer)                 # one line, at module level
    nnUNetTrainerPGPS_250epochs = pgps_trainer(nnUNetTrainerPGPS, epochs=250)

    @pgps_class                                                     # a class statement: PGPS
    class nnUNetTrainerPGPS_NoMirroring(nnUNetTrainerPGPS, nnUNetTrainerNoMirroring):  # first
        ...

The class is ``(PGPS trainer, variant)``: PGPS's hooks run first and call ``super()``, so the
variant's overrides of the methods PGPS does not own take effect (network, loss, optimizer,
augmentation rule and transforms, ``initialize``/``on_*`` hooks). PGPS owns the training loop, the
training loaders, the per-rank batch and the checkpoint (``OWNED_METHODS``): a variant overriding
one is refused. The settings PGPS sets in ``__init__`` are watched: a variant's epoch count
becomes the class's budget; any other (``OWNED_SETTINGS``) is refused, it is a ``PGPS_*`` knob.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Any, ClassVar

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from pgps.errors import PGPSError
from pgps.nnunet.base import PGPSTrainerBase
from pgps.nnunet.knobs import read_knobs
from pgps.paths import TRAINERS_DIR
from pgps.trainer_catalog import budget_epochs

_CUDA = torch.device("cuda")  # nnU-Net's default device argument
_PREFIX = "nnUNetTrainer"

#: nnU-Net methods a PGPS trainer must own, and why; a variant that overrides one cannot compose.
OWNED_METHODS: dict[str, str] = {
    "run_training": "PGPS runs its own copy of the loop (num_epochs re-read each epoch, phase timing, energy)",
    "get_dataloaders": "PGPS builds each stage's training loader itself (nnU-Net's would be discarded)",
    "_set_batch_size_and_oversample": "PGPS sets each stage's per-rank batch and oversampling",
    "save_checkpoint": "PGPS's checkpoint carries the schedule that --c resumes with",
    "load_checkpoint": "PGPS loads without running code from the file and resumes with the checkpoint's knobs",
}
#: settings nnU-Net's __init__ sets that PGPS sets from its knobs; num_epochs is the budget.
OWNED_SETTINGS: dict[str, str] = {
    "num_epochs": "PGPS_NUM_EPOCHS",
    "num_iterations_per_epoch": "PGPS_ITERS_PER_EPOCH",
    "num_val_iterations_per_epoch": "PGPS_VAL_ITERS",
    "save_every": "PGPS_SAVE_EVERY",
    "oversample_foreground_percent": "the PGPS trainer's pgps_oversample",
}


def _settings(trainer: nnUNetTrainer) -> dict[str, Any]:
    return {name: getattr(trainer, name, None) for name in OWNED_SETTINGS}


class _BeforeVariant(nnUNetTrainer):
    """Sits right above nnUNetTrainer in a composed class: nnU-Net's own values of the settings."""

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = _CUDA
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._pgps_nnunet_settings = _settings(self)


class _AfterVariant(nnUNetTrainer):
    """Sits right above the variant: checks what the variant's ``__init__`` changed, before PGPS's
    ``__init__`` goes on; a changed ``num_epochs`` becomes this instance's ``pgps_budget_epochs``,
    which PGPSTrainerBase reads before it builds the schedule."""

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = _CUDA
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        before = getattr(self, "_pgps_nnunet_settings", {})
        changed = {k: v for k, v in _settings(self).items() if k in before and v != before[k]}
        cls = type(self)
        name, variant = cls.__name__, getattr(cls, "pgps_variant", None)
        source = variant.__name__ if isinstance(variant, type) else "its nnU-Net trainer"
        fixed = getattr(cls, "pgps_budget_epochs", None)
        epochs = changed.pop("num_epochs", None)
        if fixed is not None and epochs is not None and epochs != fixed:
            raise PGPSError(f"{name}: its name fixes {fixed} epochs, but {source} sets num_epochs = {epochs}")
        if getattr(cls, "pgps_oversample", None) is None:  # a trainer that keeps nnU-Net's oversampling keeps this
            changed.pop("oversample_foreground_percent", None)
        if changed:
            setting, value = next(iter(changed.items()))
            raise PGPSError(
                f"{name}: {source} sets {setting} = {value}, which PGPS sets from {OWNED_SETTINGS[setting]}; "
                "remove it from that trainer"
            )
        if fixed is None and epochs is not None:
            check_budget_knobs(name, int(epochs))
            self.pgps_budget_epochs = int(epochs)  # an instance value, read by PGPSTrainerBase.__init__


class _Composed(PGPSTrainerBase):
    """First in a composed class's MRO: a class budget is checked against the knobs before anything
    is built (no stray results folder)."""

    pgps_variant: ClassVar[type | None] = None  # the composed nnU-Net trainer (None: a budget only)

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = _CUDA
    ) -> None:
        if self.pgps_budget_epochs is not None:
            check_budget_knobs(type(self).__name__, self.pgps_budget_epochs)
        super().__init__(plans, configuration, fold, dataset_json, device)


def check_budget_knobs(name: str, epochs: int) -> None:
    """A class whose name says its epochs refuses knobs that say otherwise: an explicit, different
    ``PGPS_NUM_EPOCHS``, or ``PGPS_TIME_BUDGET`` (which would choose the epochs); the results folder
    is named after the class, so the name must tell the truth."""
    knobs = read_knobs()
    raw = os.environ.get("PGPS_NUM_EPOCHS", "").strip()
    if raw and knobs.num_epochs != epochs:
        raise PGPSError(f"{name} trains {epochs} epochs (its name says so), but PGPS_NUM_EPOCHS={raw}: unset it")
    if knobs.time_budget != "off":
        raise PGPSError(
            f"{name} trains {epochs} epochs (its name says so), but PGPS_TIME_BUDGET={knobs.time_budget} would "
            "choose the epochs: use the class without a budget in its name"
        )


# ------------------------------------------------------------------------------------ names
def variant_suffix(variant: type) -> str:
    """``nnUNetTrainerNoMirroring`` -> ``NoMirroring``, ``nnUNetTrainer_250epochs`` -> ``250epochs``,
    ``LabTrainer`` -> ``LabTrainer``."""
    name = variant.__name__
    return name[len(_PREFIX) :].lstrip("_") if name.startswith(_PREFIX) else name


def budget_suffix(epochs: int) -> str:
    """``250epochs`` (also ``1epochs``: the one spelling ``pgps.trainer_catalog.budget_epochs`` reads)."""
    return f"{epochs}epochs"


def composed_name(pgps: type, variant: type | None = None, epochs: int | None = None) -> str:
    """``nnUNetTrainerPGPS`` + ``_NoMirroring`` (the variant's suffix) + ``_250epochs`` (the budget)."""
    parts = [pgps.__name__]
    if variant is not None:
        parts.append(variant_suffix(variant))
    if epochs is not None:
        parts.append(budget_suffix(epochs))
    return "_".join(parts)


@functools.cache
def nnunet_trainer_names() -> frozenset[str]:
    """Every class nnU-Net ships under ``nnunetv2/training/nnUNetTrainer`` (its lookup searches there
    FIRST, so a PGPS class of the same name would never be found). Read as text: nothing imported."""
    import nnunetv2

    root = Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"
    pattern = re.compile(r"^class\s+(\w+)", re.MULTILINE)
    return frozenset(m for p in root.rglob("*.py") for m in pattern.findall(p.read_text(errors="replace")))


def _check_name(name: str, module: str, pgps: type, variant: type | None) -> None:
    if not name.isidentifier():
        raise PGPSError(f"trainer name {name!r}: not a Python identifier")
    if name in nnunet_trainer_names():
        raise PGPSError(f"trainer name {name}: nnU-Net ships a class of that name, which its lookup finds first")
    shipped = {p.stem for p in TRAINERS_DIR.glob("*.py")}
    if name in shipped and module.rpartition(".")[2] != name:
        raise PGPSError(f"trainer name {name}: pgps ships it ({TRAINERS_DIR / name}.py); pick another name")
    for other in (pgps, variant):
        if other is not None and other.__name__ == name:
            raise PGPSError(f"trainer name {name}: the same as the class it is made from")


# ------------------------------------------------------------------------------------ composition
def _check_parts(pgps: Any, variant: Any) -> None:
    if not (isinstance(pgps, type) and issubclass(pgps, PGPSTrainerBase)):
        raise PGPSError(f"{pgps!r}: the PGPS side must be a PGPS trainer class (e.g. nnUNetTrainerPGPS)")
    if variant is None:
        return
    if not (isinstance(variant, type) and issubclass(variant, nnUNetTrainer)):
        raise PGPSError(f"{variant!r}: not an nnU-Net trainer class (a subclass of nnUNetTrainer)")
    if variant is nnUNetTrainer:
        raise PGPSError(f"{pgps.__name__}: already PGPS on nnU-Net's nnUNetTrainer; use it as it is")
    if issubclass(variant, PGPSTrainerBase):
        raise PGPSError(f"{variant.__name__}: already a PGPS trainer; give it as the PGPS side, with epochs=")
    for method, why in OWNED_METHODS.items():
        if getattr(variant, method) is not getattr(nnUNetTrainer, method):
            raise PGPSError(f"{variant.__name__} overrides {method}, which PGPS must own: {why}")


def _check_epochs(epochs: Any, pgps: type) -> None:
    if epochs is None:
        return
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise PGPSError(f"epochs={epochs!r}: an epoch budget must be an integer >= 1")
    fixed = getattr(pgps, "pgps_budget_epochs", None)
    if fixed is not None:
        raise PGPSError(f"{pgps.__name__} already fixes {fixed} epochs; compose its un-budgeted class instead")


def _build(
    name: str,
    module: str,
    qualname: str,
    namespace: dict[str, Any],
    pgps: type,
    variant: type | None,
    epochs: int | None,
) -> type[PGPSTrainerBase]:
    _check_parts(pgps, variant)
    _check_epochs(epochs, pgps)
    if variant is None and epochs is None:
        raise PGPSError(f"{name}: {pgps.__name__} is already a PGPS trainer; give a variant or an epoch budget")
    if variant is not None and getattr(pgps, "pgps_budget_epochs", None) is not None:
        raise PGPSError(f"{name}: {pgps.__name__} fixes its epochs; compose the class without a budget, then budget it")
    _check_name(name, module, pgps, variant)
    layers: tuple[type, ...] = (pgps,) if issubclass(pgps, _Composed) else (_Composed, pgps)
    if variant is not None:
        layers = (*layers, _AfterVariant, variant, _BeforeVariant)
    ns = {
        **namespace,
        "__module__": module,
        "__qualname__": qualname,
        "pgps_variant": variant if variant is not None else getattr(pgps, "pgps_variant", None),
        "pgps_budget_epochs": epochs,
    }
    if ns.get("__doc__") is None:
        ns["__doc__"] = _doc(pgps, variant, epochs)
    try:
        cls = type(name, layers, ns)
    except TypeError as exc:  # an inconsistent MRO (the variant lists a PGPS layer itself)
        raise PGPSError(f"{name}: cannot compose {pgps.__name__} with {variant}: {exc}") from None
    _repoint_class_cells(ns, cls)
    return cls


def _doc(pgps: type, variant: type | None, epochs: int | None) -> str:
    on = f" on {variant.__name__}" if variant is not None else ""
    budget = f", {epochs} epochs" if epochs is not None else ""
    return f"{pgps.__name__}{on}{budget} (made by pgps.nnunet.variants)."


def _repoint_class_cells(namespace: dict[str, Any], cls: type) -> None:
    """Zero-argument ``super()`` in a decorated class body refers to the class statement's class;
    point it at the composed one (as dataclasses do for slots)."""
    for value in namespace.values():
        funcs = [value]
        if isinstance(value, staticmethod | classmethod):
            funcs = [value.__func__]
        elif isinstance(value, property):
            funcs = [value.fget, value.fset, value.fdel]
        for f in funcs:
            code, closure = getattr(f, "__code__", None), getattr(f, "__closure__", None)
            if code is not None and closure and "__class__" in code.co_freevars:
                closure[code.co_freevars.index("__class__")].cell_contents = cls


def pgps_trainer(
    base: type,
    pgps: type | None = None,
    *,
    epochs: int | None = None,
    name: str | None = None,
    module: str | None = None,
) -> type[PGPSTrainerBase]:
    """A PGPS version of the nnU-Net trainer ``base`` (``pgps``: which PGPS trainer, default
    ``nnUNetTrainerPGPS``), or, when ``base`` is a PGPS trainer, its ``epochs`` budget class.
    Named ``nnUNetTrainerPGPS_<variant suffix>[_<N>epochs]`` unless ``name`` is given; assign it at
    module level under that name, in a file of a folder on ``nnUNet_extTrainer`` (nnU-Net finds
    classes by module attribute). ``module`` defaults to the caller's (for pickling)."""
    if isinstance(base, type) and issubclass(base, PGPSTrainerBase):
        if pgps is not None:
            raise PGPSError(f"{base.__name__}: already a PGPS trainer; leave pgps= out")
        pgps_cls, variant = base, None
    else:
        if pgps is None:
            from pgps.trainers.nnUNetTrainerPGPS import nnUNetTrainerPGPS

            pgps = nnUNetTrainerPGPS
        pgps_cls, variant = pgps, base
    _check_parts(pgps_cls, variant)
    _check_epochs(epochs, pgps_cls)
    name = name if name is not None else composed_name(pgps_cls, variant, epochs)
    module = module if module is not None else sys._getframe(1).f_globals.get("__name__", __name__)
    return _build(name, module, name, {}, pgps_cls, variant, epochs)


def pgps_class(cls: type) -> type[PGPSTrainerBase]:
    """Decorator for ``class <Name>(<PGPS trainer>[, <nnU-Net trainer>]): ...``: composes the two as
    ``pgps_trainer`` does; a name ending in ``_<N>epochs`` fixes that budget
    (``pgps.trainer_catalog.budget_epochs``, which ``pgps schedule -tr`` reads too)."""
    bases = cls.__bases__
    if not 1 <= len(bases) <= 2:
        raise PGPSError(f"{cls.__name__}: list the PGPS trainer first and at most one nnU-Net trainer after it")
    pgps, variant = bases[0], (bases[1] if len(bases) == 2 else None)
    epochs = budget_epochs(cls.__name__)
    if re.fullmatch(r".*_\d+epoch", cls.__name__) or (
        epochs is not None and not cls.__name__.endswith(f"_{budget_suffix(epochs)}")
    ):
        raise PGPSError(f"{cls.__name__}: spell an epoch budget _<N>epochs with N >= 1, e.g. _250epochs or _1epochs")
    namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    return _build(cls.__name__, cls.__module__, cls.__qualname__, namespace, pgps, variant, epochs)
