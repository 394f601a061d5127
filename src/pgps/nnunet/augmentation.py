"""The spatial augmentation each curriculum stage really gets (issue 12.4).

nnU-Net derives the rotation range, the "dummy 2D" augmentation (rotate/scale in-plane only),
the mirror axes and the enlarged pre-augmentation ("initial") crop from the PATCH SHAPE
(``nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size``). A stage patch has
other proportions than the planned one, so the regime switches between stages: on a 40x224x224
plan with 3/5/5 poolings stages 0, 3 and 6 get full 3D +-30 deg rotation across the thick axis
that the planned patch never gets. Two modes (knob ``PGPS_AUGMENTATION``):

``stage``    nnU-Net's rule applied to each stage's patch (what the official PGPS code does).
``planned``  the planned patch's regime (dummy-2D flag, rotation range, mirror axes) at every
             stage; only the crop changes. The initial crop is derived for the stage patch under
             that regime with nnU-Net's ``get_patch_size``; in dummy 2D only the in-plane axes
             rotate, so it is computed on those and the first axis is kept.

Everything here is a pure function of (planned patch, stage patch, mode, rule); ``rule`` is
nnU-Net's per-patch rule, by default a replica of the base trainer's (``nnunet_rule``), or the
trainer's own method when a subclass overrides it (``rule_for``).

Record layout (CONTRACTS.md): ``rotation_deg`` holds, per rotation the SpatialTransform draws,
the range in degrees: ``x`` = rotation about patch axis 0 (in the plane of axes 1 and 2, the
in-plane rotation of dummy 2D), ``y`` about axis 1, ``z`` about axis 2 -- batchgenerators'
``create_affine_matrix_3d(angles)`` order and nnU-Net's ``get_patch_size(rot_x, rot_y, rot_z)``.
Dummy 2D rotates only about axis 0 (y and z are [0, 0]); a 2D configuration records its one
in-plane rotation under ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

MODES = ("stage", "planned")
SCALE_RANGE = (0.85, 1.25)  # what nnU-Net passes to get_patch_size (not the SpatialTransform's scaling)


@dataclass(frozen=True)
class Regime:
    """nnU-Net's patch-dependent augmentation settings for one crop size."""

    rotation: Any  # what get_training_transforms receives: (lo, hi) radians for nnU-Net's rule
    dummy_2d: bool
    mirror_axes: tuple[int, ...] | None  # None: no mirroring (e.g. nnUNetTrainerNoMirroring)


@dataclass(frozen=True)
class StageAugmentation:
    """What one stage's training transforms and loader are built with."""

    patch_size: tuple[int, ...]
    initial_patch_size: tuple[int, ...]
    regime: Regime

    def to_record(self, stage: int) -> dict:
        """One entry of ``pgps_record.json``'s ``augmentation.stages`` (CONTRACTS.md)."""
        return {
            "stage": int(stage),
            "patch_size": list(self.patch_size),
            "initial_patch_size": list(self.initial_patch_size),
            "dummy_2d": bool(self.regime.dummy_2d),
            "rotation_deg": rotation_deg(self.regime, len(self.patch_size)),
            "mirror_axes": None if self.regime.mirror_axes is None else [int(a) for a in self.regime.mirror_axes],
        }


Rule = Callable[[Sequence[int]], tuple[Regime, tuple[int, ...]]]


def _get_patch_size(final: Sequence[int], rotation: Any) -> tuple[int, ...]:
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

    out = get_patch_size(list(final), rotation, rotation, rotation, SCALE_RANGE)
    return tuple(int(x) for x in out)


def nnunet_rule(patch: Sequence[int]) -> tuple[Regime, tuple[int, ...]]:
    """nnU-Net 2.8's base-trainer rule for ``patch``: (regime, initial patch). Same arithmetic as
    ``configure_rotation_dummyDA_mirroring_and_inital_patch_size``, without its side effects
    (a log line, ``inference_allowed_mirroring_axes``); a test holds it equal to the original."""
    from nnunetv2.configuration import ANISO_THRESHOLD

    patch = tuple(int(x) for x in patch)
    if len(patch) == 2:
        half = 15.0 if max(patch) / min(patch) > 1.5 else 180.0
        regime = Regime((-math.radians(half), math.radians(half)), False, (0, 1))
    elif len(patch) == 3:
        dummy = max(patch) / patch[0] > ANISO_THRESHOLD
        half = 180.0 if dummy else 30.0
        regime = Regime((-math.radians(half), math.radians(half)), dummy, (0, 1, 2))
    else:
        raise ValueError(f"patch {list(patch)}: nnU-Net augments 2D and 3D patches only")
    initial = list(_get_patch_size(patch, regime.rotation))
    if regime.dummy_2d:
        initial[0] = patch[0]
    return regime, tuple(initial)


def initial_patch_under(patch: Sequence[int], regime: Regime) -> tuple[int, ...]:
    """The pre-augmentation crop ``patch`` needs under ``regime`` (nnU-Net's ``get_patch_size``);
    dummy 2D rotates in-plane only, so the in-plane axes are enlarged and axis 0 is kept."""
    patch = tuple(int(x) for x in patch)
    if regime.dummy_2d:
        return (patch[0], *_get_patch_size(patch[1:], regime.rotation))
    return _get_patch_size(patch, regime.rotation)


def stage_augmentation(
    planned_patch: Sequence[int], stage_patch: Sequence[int], mode: str, rule: Rule = nnunet_rule
) -> StageAugmentation:
    """The augmentation a stage trains with under ``mode`` (see the module docstring)."""
    stage_patch = tuple(int(x) for x in stage_patch)
    if mode == "stage":
        regime, initial = rule(stage_patch)
    elif mode == "planned":
        regime, planned_initial = rule(tuple(int(x) for x in planned_patch))
        same = stage_patch == tuple(int(x) for x in planned_patch)
        initial = planned_initial if same else initial_patch_under(stage_patch, regime)
    else:
        raise ValueError(f"augmentation mode {mode!r}: use one of {', '.join(MODES)}")
    return StageAugmentation(stage_patch, tuple(int(x) for x in initial), regime)


def _range_deg(rotation: Any) -> list[float] | None:
    if isinstance(rotation, int | float | np.floating | np.integer):
        v = round(math.degrees(float(rotation)), 6)
        return [v, v]
    if isinstance(rotation, tuple | list) and len(rotation) == 2:
        if all(isinstance(v, int | float | np.floating | np.integer) for v in rotation):
            return [round(math.degrees(float(v)), 6) for v in rotation]
    return None  # a sampler nnU-Net variants may pass: not a fixed range


def rotation_deg(regime: Regime, ndim: int) -> dict[str, list[float] | None]:
    """Per rotation axis, the range the SpatialTransform draws from (layout: module docstring)."""
    full = _range_deg(regime.rotation)
    none = [0.0, 0.0]
    if ndim == 2 or regime.dummy_2d:
        return {"x": full, "y": none, "z": none}
    return {"x": full, "y": full, "z": full}


def augmentation_record(
    mode: str, planned_patch: Sequence[int], stage_patches: Iterable[tuple[int, Sequence[int]]], rule: Rule
) -> dict:
    """``pgps_record.json``'s top-level ``augmentation``: one entry per (stage index, patch);
    RPSS lists each candidate patch under its (single) stage index."""
    entries = [stage_augmentation(planned_patch, p, mode, rule).to_record(i) for i, p in stage_patches]
    return {"mode": mode, "stages": entries}


# ---------------------------------------------------------------- the trainer's rule
@contextmanager
def planned_patch_replaced(configuration_manager: Any, patch: Sequence[int]) -> Any:
    """Temporarily show ``patch`` as the plan's patch (nnU-Net reads it in its rule); always
    restored, so plans, checkpoints, validation and inference keep the planned patch."""
    conf = configuration_manager.configuration
    old = conf["patch_size"]
    conf["patch_size"] = [int(x) for x in patch]
    try:
        yield
    finally:
        conf["patch_size"] = old


def rule_for(trainer: Any) -> Rule:
    """The replica when the trainer keeps nnU-Net's method; else its own method, called with
    the patch shown as the plan's (its side effect on ``inference_allowed_mirroring_axes`` is
    undone: inference keeps the planned patch's mirroring)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    name = "configure_rotation_dummyDA_mirroring_and_inital_patch_size"
    if getattr(type(trainer), name) is getattr(nnUNetTrainer, name):
        return nnunet_rule

    def own(patch: Sequence[int]) -> tuple[Regime, tuple[int, ...]]:
        kept = getattr(trainer, "inference_allowed_mirroring_axes", None)
        with planned_patch_replaced(trainer.configuration_manager, patch):
            rotation, dummy, initial, mirror = getattr(trainer, name)()
        trainer.inference_allowed_mirroring_axes = kept
        axes = None if mirror is None else tuple(int(a) for a in mirror)
        return Regime(rotation, bool(dummy), axes), tuple(int(x) for x in initial)

    return own


def trainer_stage_augmentation(trainer: Any, patch: Sequence[int], mode: str) -> StageAugmentation:
    """``stage_augmentation`` for this trainer's plan and rule."""
    planned = tuple(int(x) for x in trainer.configuration_manager.patch_size)
    return stage_augmentation(planned, patch, mode, rule_for(trainer))
