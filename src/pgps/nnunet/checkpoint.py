"""Checkpoints of the PGPS trainers: nnU-Net's checkpoint plus a ``pgps`` entry (schedule, knobs,
time-budget plan), written atomically; loaded without running code from it; and the check that a
checkpoint may be resumed with the current settings. nnU-Net 2.8 writes in place (a kill mid-write
leaves a torn ``checkpoint_latest.pth``), loads with ``torch.load(weights_only=False)`` (a crafted
checkpoint, say from a shared DVC remote, runs arbitrary code: issue 15.3) and resumes whatever
curriculum settings it is given."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pgps import fileio
from pgps.errors import PGPSError
from pgps.nnunet.dryrun import unwrap
from pgps.nnunet.time_budget.plan import TimePlan

if TYPE_CHECKING:
    from pgps.nnunet.base import PGPSTrainerBase


def save(trainer: PGPSTrainerBase, filename: str) -> None:
    """ADAPTED COPY of ``nnUNetTrainer.save_checkpoint`` (nnU-Net 2.8.1; pinned by
    tests/test_nnunet_copies.py): the same dict, plus ``pgps``, written with ``pgps.fileio``."""
    if trainer.local_rank != 0:
        return
    if trainer.disable_checkpointing:
        trainer.print_to_log_file("No checkpoint written, checkpointing is disabled")
        return
    plan = trainer.pgps_time_plan
    checkpoint = {
        "network_weights": unwrap(trainer.network).state_dict(),
        "optimizer_state": trainer.optimizer.state_dict(),
        "grad_scaler_state": trainer.grad_scaler.state_dict() if trainer.grad_scaler is not None else None,
        "logging": trainer.logger.get_checkpoint(),
        "_best_ema": trainer._best_ema,
        "current_epoch": trainer.current_epoch + 1,
        "init_args": trainer.my_init_kwargs,
        "trainer_name": trainer.__class__.__name__,
        "inference_allowed_mirroring_axes": trainer.inference_allowed_mirroring_axes,
        "pgps": {
            "schedule": trainer.pgps_schedule.to_dict(),
            "knobs": trainer.pgps_knobs.to_dict(),
            "time_plan": plan.to_dict() if plan is not None else None,
        },
    }
    fileio.write_with(filename, lambda tmp: torch.save(checkpoint, tmp))


def _allowed_globals() -> list[Any]:
    """What a PGPS checkpoint holds besides tensors and plain containers: numpy scalars and arrays
    (nnU-Net's logger keeps numpy losses and Dice values). Constructors of data only, no callables
    that act."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved np.core to np._core
    return [np.dtype, core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, *set(map(type, _DTYPES))]


_DTYPES = [np.dtype(t) for t in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool")]


def _one_line(exc: BaseException) -> str:
    """The line of torch's multi-line refusal that names the problem (or the first line)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    named = [ln for ln in lines if re.search(r"unsupported|GLOBAL|not an allowed", ln, re.IGNORECASE)]
    return (named or lines or [type(exc).__name__])[0][:300]


def load_safely(filename: str) -> dict[str, Any]:
    """The checkpoint as plain data: ``torch.load(weights_only=True)`` with only the numpy types
    above allowed, onto the CPU, then its structure checked (``check_structure``). Anything else
    in the pickle (a ``__reduce__`` that runs code) is refused before it runs: one line."""
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            ckpt = torch.load(filename, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PGPSError(f"{filename}: no such checkpoint") from None
    except Exception as exc:  # UnpicklingError (a refused global), a torn or foreign file
        raise PGPSError(
            f"{filename}: refused to load: not a checkpoint of plain data and tensors ({_one_line(exc)})"
        ) from None
    check_structure(ckpt, filename)
    return ckpt


# nnU-Net's keys (what ``restore`` reads) and the PGPS entry's, with the types they must have
_NNUNET_KEYS: dict[str, tuple[type, ...]] = {
    "network_weights": (dict,),
    "optimizer_state": (dict,),
    "logging": (dict,),
    "current_epoch": (int,),
    "init_args": (dict,),
}
_PGPS_KEYS: dict[str, tuple[type, ...]] = {"schedule": (dict,), "knobs": (dict,), "time_plan": (dict, type(None))}


def check_structure(ckpt: Any, where: str) -> None:
    """What ``restore`` and the resume checks read is there and of the right type (one line
    naming the first problem), so a foreign or damaged checkpoint is refused before anything
    of it is used."""
    if not isinstance(ckpt, dict):
        raise PGPSError(f"{where}: not an nnU-Net checkpoint (a {type(ckpt).__name__}, not a dict)")
    for key, types in _NNUNET_KEYS.items():
        if not isinstance(ckpt.get(key), types) or isinstance(ckpt.get(key), bool):
            raise PGPSError(f"{where}: not an nnU-Net checkpoint ({key!r} missing or not a {types[0].__name__})")
    if "_best_ema" not in ckpt:
        raise PGPSError(f"{where}: not an nnU-Net checkpoint ('_best_ema' missing)")
    if ckpt["current_epoch"] < 0:
        raise PGPSError(f"{where}: current_epoch {ckpt['current_epoch']} is negative")
    saved = ckpt.get("pgps")
    if saved is None:
        raise PGPSError(f"{where}: not written by a PGPS trainer (no 'pgps' entry); cannot check its curriculum")
    if not isinstance(saved, dict):
        raise PGPSError(f"{where}: its 'pgps' entry is a {type(saved).__name__}, not a dict")
    for key, types in _PGPS_KEYS.items():
        if key not in saved or not isinstance(saved[key], types):
            raise PGPSError(f"{where}: its 'pgps' entry lacks {key!r} or it is not a {types[0].__name__}")
    stages = saved["schedule"].get("stages")
    if not isinstance(stages, list) or not stages or not all(isinstance(st, dict) for st in stages):
        raise PGPSError(f"{where}: its PGPS schedule has no list of stages")


def restore(trainer: PGPSTrainerBase, ckpt: dict[str, Any]) -> None:
    """ADAPTED COPY of the part of ``nnUNetTrainer.load_checkpoint`` (nnU-Net 2.8.1; pinned by
    tests/test_nnunet_copies.py) after its ``torch.load``: the same state restored from a
    checkpoint loaded by ``load_safely`` (nnU-Net's own method loads with ``weights_only=False``
    and cannot be handed a loaded dict: its dict branch is missing)."""
    if not trainer.was_initialized:
        trainer.initialize()
    network = unwrap(trainer.network)
    own = network.state_dict().keys()
    weights = {}
    for key, value in ckpt["network_weights"].items():  # nn.DataParallel prefixes 'module.'
        weights[key[7:] if key not in own and key.startswith("module.") else key] = value
    trainer.my_init_kwargs = ckpt["init_args"]
    trainer.current_epoch = ckpt["current_epoch"]
    trainer.logger.load_checkpoint(ckpt["logging"])
    trainer._best_ema = ckpt["_best_ema"]
    trainer.inference_allowed_mirroring_axes = ckpt.get(
        "inference_allowed_mirroring_axes", trainer.inference_allowed_mirroring_axes
    )
    network.load_state_dict(weights)
    trainer.optimizer.load_state_dict(ckpt["optimizer_state"])
    if trainer.grad_scaler is not None and ckpt.get("grad_scaler_state") is not None:
        trainer.grad_scaler.load_state_dict(ckpt["grad_scaler_state"])


def saved_time_plan(checkpoint: dict[str, Any], where: str, time_budget: str) -> TimePlan | None:
    """The checkpoint's time-budget plan, after checking the knob agrees: a budgeted run resumes
    only with a budget (and the plan it started with, never re-measured), an unbudgeted one only
    without."""
    plan = checkpoint["pgps"]["time_plan"]  # check_structure: a dict or None
    if plan is not None and time_budget == "off":
        raise PGPSError(
            f"{where}: the checkpoint was trained with PGPS_TIME_BUDGET={plan['time_budget']}; set it again to resume"
        )
    if plan is None and time_budget != "off":
        raise PGPSError(f"{where}: the checkpoint holds no time-budget plan; unset PGPS_TIME_BUDGET to resume it")
    return None if plan is None else TimePlan.from_dict(plan, where)


def check_schedule(checkpoint: dict[str, Any], where: str, mine: dict[str, Any]) -> None:
    """Refuse a checkpoint trained with a different curriculum (one line naming what differs)."""
    saved = checkpoint["pgps"]["schedule"]
    if saved == mine:
        return
    diff = sorted(k for k in set(mine) | set(saved) if mine.get(k) != saved.get(k))
    named = [k for k in diff if k not in ("stages", "voxel_fraction")]
    detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {mine.get(k)!r}" for k in named)
    raise PGPSError(
        f"{where}: the checkpoint was trained with a different PGPS schedule ({detail or 'stages differ'}); "
        "resume with the PGPS_* values in pgps_config.json or start a new run"
    )
