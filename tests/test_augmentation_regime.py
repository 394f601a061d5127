"""The augmentation each PGPS stage really gets (issue 12.4), ``PGPS_AUGMENTATION=stage|planned``.

Expected values below were computed BY HAND from nnU-Net 2.8's rule
(``configure_rotation_dummyDA_mirroring_and_inital_patch_size`` + ``get_patch_size``):

- dummy 2D  <=>  max(patch) / patch[0] > 3 (ANISO_THRESHOLD); then rotation +-180 deg about axis 0
  only, else +-30 deg about each axis. Mirror axes (0, 1, 2) either way.
- ``get_patch_size`` rotates the corner vector v = patch by the range's end angle t (clipped to
  90 deg) about each axis separately and keeps, per axis, the largest |component|; then / 0.85
  and floor. With c = cos t, s = sin t (rows of batchgenerators' rotation matrices):
      axis 0: max(v0, v0 c + v1 s, |v0 c - v2 s|)
      axis 1: max(v1, v1 c + v2 s, |v1 c - v0 s|)
      axis 2: max(v2, |v2 c - v1 s|, v0 s + v2 c)
  3D (t = 30 deg, c = 0.8660, s = 0.5), e.g. (16, 32, 32): axis 0 = 13.86 + 16 = 29.86 -> 35;
  axis 1 = 27.71 + 16 = 43.71 -> 51; axis 2 = 8 + 27.71 = 35.71 -> 42  =>  (35, 51, 42).
  Dummy 2D (t = 90 deg): in-plane axes = floor(max(v) / 0.85), axis 0 kept,
  e.g. (16, 64, 32) -> (16, 75, 75).
- ``planned``: the planned patch's regime; in dummy 2D the initial crop is the 2D rule on the
  in-plane axes (floor(max(v1, v2) / 0.85)), e.g. (16, 32, 32) -> (16, 37, 37); in 3D the 3D rule,
  e.g. (16, 64, 32) -> axis 0 = 13.86 + 32 = 45.86 -> 53, axis 1 = 55.43 + 16 = 71.43 -> 84,
  axis 2 = 8 + 27.71 -> 42  =>  (53, 84, 42).

The loader tests build the REAL nnU-Net transforms and loader on the reduced task with an extra
configuration (``3d_aniso``, patch 8x32x32, poolings 2/3/3: the plan is dummy 2D, the first PGPS
stages are not) and check what the SpatialTransform carries and what the loader yields."""

from __future__ import annotations

import copy
import importlib
import json
import math
from pathlib import Path

import pytest
import torch

from pgps.nnunet.augmentation import (
    augmentation_record,
    initial_patch_under,
    nnunet_rule,
    planned_patch_replaced,
    rule_for,
    stage_augmentation,
    trainer_stage_augmentation,
)
from pgps.schedule import build_schedule

# (stage patch, stage-mode initial, stage-mode dummy 2D, planned-mode initial); plan 40x224x224, 3/5/5:
# the plan is dummy 2D, so planned mode is dummy 2D at every stage
PLAN_A = (40, 224, 224)
TABLE_A = [
    ((16, 32, 32), (35, 51, 42), False, (16, 37, 37)),
    ((16, 64, 32), (16, 75, 75), True, (16, 75, 75)),
    ((16, 64, 64), (16, 75, 75), True, (16, 75, 75)),
    ((24, 64, 64), (62, 102, 79), False, (24, 75, 75)),
    ((24, 96, 64), (24, 112, 112), True, (24, 112, 112)),
    ((24, 96, 96), (24, 112, 112), True, (24, 112, 112)),
    ((32, 96, 96), (89, 154, 116), False, (32, 112, 112)),
    ((32, 128, 96), (32, 150, 150), True, (32, 150, 150)),
    ((32, 128, 128), (32, 150, 150), True, (32, 150, 150)),
    ((40, 128, 128), (40, 150, 150), True, (40, 150, 150)),
    ((40, 160, 128), (40, 188, 188), True, (40, 188, 188)),
    ((40, 160, 160), (40, 188, 188), True, (40, 188, 188)),
    ((40, 192, 160), (40, 225, 225), True, (40, 225, 225)),
    ((40, 192, 192), (40, 225, 225), True, (40, 225, 225)),
    ((40, 224, 192), (40, 263, 263), True, (40, 263, 263)),
    ((40, 224, 224), (40, 263, 263), True, (40, 263, 263)),
]
# plan 64x192x160, 3/5/5: the plan is 3D (192/64 = 3 is not > 3), so planned mode is 3D +-30 deg
PLAN_B = (64, 192, 160)
TABLE_B = [
    ((16, 32, 32), (35, 51, 42), False, (35, 51, 42)),
    ((16, 64, 32), (16, 75, 75), True, (53, 84, 42)),
    ((16, 64, 64), (16, 75, 75), True, (53, 102, 75)),
    ((24, 64, 64), (62, 102, 79), False, (62, 102, 79)),
    ((24, 96, 64), (24, 112, 112), True, (80, 135, 79)),
    ((24, 96, 96), (24, 112, 112), True, (80, 154, 112)),
    ((32, 96, 96), (89, 154, 116), False, (89, 154, 116)),
    ((32, 128, 96), (32, 150, 150), True, (107, 186, 116)),
    ((32, 128, 128), (32, 150, 150), True, (107, 205, 150)),
    ((40, 128, 128), (40, 150, 150), True, (116, 205, 153)),
    ((40, 160, 128), (40, 188, 188), True, (134, 238, 153)),
    ((40, 160, 160), (40, 188, 188), True, (134, 257, 188)),
    ((48, 160, 160), (48, 188, 188), True, (143, 257, 191)),
    ((48, 192, 160), (48, 225, 225), True, (161, 289, 191)),
    ((56, 192, 160), (56, 225, 225), True, (169, 289, 195)),
    ((64, 192, 160), (178, 289, 200), False, (178, 289, 200)),
]
ROT_3D = {"x": [-30.0, 30.0], "y": [-30.0, 30.0], "z": [-30.0, 30.0]}
ROT_DUMMY = {"x": [-180.0, 180.0], "y": [0.0, 0.0], "z": [0.0, 0.0]}


@pytest.mark.parametrize(("plan", "table", "plan_dummy"), [(PLAN_A, TABLE_A, True), (PLAN_B, TABLE_B, False)])
def test_stage_and_planned_regimes_match_hand_computed_values(plan, table, plan_dummy) -> None:
    stages = build_schedule(plan, (3, 5, 5), 1000, 2, mode="pgps").stages
    assert [s.patch_size for s in stages] == [row[0] for row in table]
    for i, (patch, stage_initial, stage_dummy, planned_initial) in enumerate(table):
        got = stage_augmentation(plan, patch, "stage").to_record(i)
        assert got == {
            "stage": i,
            "patch_size": list(patch),
            "initial_patch_size": list(stage_initial),
            "dummy_2d": stage_dummy,
            "rotation_deg": ROT_DUMMY if stage_dummy else ROT_3D,
            "mirror_axes": [0, 1, 2],
        }
        kept = stage_augmentation(plan, patch, "planned").to_record(i)
        assert kept["initial_patch_size"] == list(planned_initial)
        assert kept["dummy_2d"] is plan_dummy
        assert kept["rotation_deg"] == (ROT_DUMMY if plan_dummy else ROT_3D)
        assert kept["mirror_axes"] == [0, 1, 2]


def test_the_switch_the_issue_describes() -> None:
    """40x224x224: stages 0, 3, 6 rotate +-30 deg across the thick axis, the plan never does;
    64x192x160: 12 of 16 stages rotate +-180 deg in-plane, the plan never does."""
    three_d = [i for i, row in enumerate(TABLE_A) if not row[2]]
    assert three_d == [0, 3, 6]
    assert sum(row[2] for row in TABLE_B) == 12 and not TABLE_B[-1][2]


def test_planned_mode_at_the_planned_patch_is_nnunets_own_initial_patch() -> None:
    for plan in (PLAN_A, PLAN_B, (32, 32, 32), (8, 32, 32), (56, 40)):
        regime, initial = nnunet_rule(plan)
        assert stage_augmentation(plan, plan, "planned").initial_patch_size == initial
        assert initial_patch_under(plan, regime) == initial  # the in-plane rule agrees at the plan itself


def test_2d_configuration_rule() -> None:
    regime, initial = nnunet_rule((56, 40))  # 56/40 = 1.4 <= 1.5: +-180 deg
    assert regime.mirror_axes == (0, 1) and not regime.dummy_2d
    assert stage_augmentation((56, 40), (56, 40), "stage").to_record(0)["rotation_deg"] == ROT_DUMMY
    assert initial == (int(56 / 0.85), int(56 / 0.85))  # 90 deg: both axes see the longer side
    narrow, _ = nnunet_rule((64, 16))  # 4 > 1.5: +-15 deg
    assert narrow.rotation == pytest.approx((-math.radians(15), math.radians(15)))


def test_rpss_record_lists_every_candidate_under_its_stage() -> None:
    sched = build_schedule(PLAN_A, (3, 5, 5), 1000, 2, mode="rpss")
    rec = augmentation_record("stage", PLAN_A, [(0, c) for c in sched.candidates], nnunet_rule)
    assert rec["mode"] == "stage" and len(rec["stages"]) == len(TABLE_A)
    assert [e["dummy_2d"] for e in rec["stages"]] == [row[2] for row in TABLE_A]
    assert {e["stage"] for e in rec["stages"]} == {0}
    json.dumps(rec, allow_nan=False)  # strict JSON


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="augmentation mode 'plan'"):
        stage_augmentation(PLAN_A, PLAN_A, "plan")


# ---------------------------------------------------------------- the real nnU-Net pieces
@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_trainer_fixtures import reduced_root

    return reduced_root(tmp_path_factory)


ANISO = "3d_aniso"
ANISO_PATCH = (8, 32, 32)


def aniso_plans(root: Path) -> dict:
    """The reduced task's plans plus ``3d_aniso``: inherits 3d_fullres (same preprocessed data),
    patch 8x32x32, one pooling fewer on axis 0 (poolings 2/3/3)."""
    from test_trainer_fixtures import load_plans

    plans = load_plans(root)
    arch = copy.deepcopy(plans["configurations"]["3d_fullres"]["architecture"])
    arch["arch_kwargs"]["strides"] = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    plans["configurations"][ANISO] = {
        "inherits_from": "3d_fullres",
        "patch_size": list(ANISO_PATCH),
        "architecture": arch,
    }
    plans["continue_training"] = False
    return plans


def make_trainer(root: Path, results: Path, monkeypatch: pytest.MonkeyPatch, name: str = "nnUNetTrainerPGPS"):
    from test_trainer_fixtures import DATASET, nnunet_env

    for k, v in nnunet_env(root, results, PGPS_NUM_EPOCHS="1000", PGPS_SEED="3").items():
        monkeypatch.setenv(k, v)
    if name.startswith("nnUNetTrainerPGPS"):
        cls = getattr(importlib.import_module(f"pgps.trainers.{name}"), name)
    else:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        cls = recursive_find_trainer_class_by_name(name)
    dataset_json = json.loads((root / "nnUNet_preprocessed" / DATASET / "dataset.json").read_text())
    return cls(
        plans=aniso_plans(root), configuration=ANISO, fold=0, dataset_json=dataset_json, device=torch.device("cpu")
    )


def _spatial(loader):
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.pseudo2d import Convert3DTo2DTransform

    transforms = loader.data_loader.transforms.transforms
    spatial = [t for t in transforms if isinstance(t, SpatialTransform)]
    assert len(spatial) == 1
    return spatial[0], any(isinstance(t, Convert3DTo2DTransform) for t in transforms)


@pytest.mark.slow
def test_replica_equals_nnunets_method(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pure rule is nnU-Net's method, for every stage patch of the three plans above."""
    trainer = make_trainer(root, tmp_path, monkeypatch)
    patches = {row[0] for row in TABLE_A + TABLE_B} | {s.patch_size for s in trainer.pgps_schedule.stages}
    name = "configure_rotation_dummyDA_mirroring_and_inital_patch_size"
    for patch in sorted(patches):
        with planned_patch_replaced(trainer.configuration_manager, patch):
            rotation, dummy, initial, mirror = getattr(trainer, name)()
        regime, mine = nnunet_rule(patch)
        assert (regime.rotation, regime.dummy_2d, regime.mirror_axes) == (rotation, dummy, mirror)
        assert mine == tuple(int(x) for x in initial)
    assert tuple(trainer.configuration_manager.patch_size) == ANISO_PATCH  # the plan is restored


@pytest.mark.slow
def test_built_transforms_and_loader_stage_vs_planned(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgps.nnunet.loaders import build_train_loader, finish_loader

    trainer = make_trainer(root, tmp_path, monkeypatch)
    trainer.initialize()
    stages = trainer.pgps_schedule.stages
    assert trainer.pgps_poolings == (2, 3, 3)
    patches = [s.patch_size for s in stages]
    assert patches[0] == (8, 8, 8) and patches[-1] == ANISO_PATCH
    # stage mode: 3D while max/axis0 <= 3, dummy 2D after; planned: dummy 2D throughout
    expected_dummy = [max(p) / p[0] > 3 for p in patches]
    assert expected_dummy[0] is False and expected_dummy[-1] is True
    for patch, stage_dummy in [(patches[0], False), (patches[-1], True)]:
        for mode, dummy in (("stage", stage_dummy), ("planned", True)):
            aug = trainer_stage_augmentation(trainer, patch, mode)
            loader = build_train_loader(trainer, patch, 2, 0.5, num_processes=0, augmentation=mode)
            try:
                spatial, converts = _spatial(loader)
                half = math.radians(180 if dummy else 30)
                assert spatial.rotation == pytest.approx((-half, half)), (patch, mode)
                assert converts is dummy
                assert tuple(spatial.patch_size) == (patch[1:] if dummy else patch)
                dl = loader.data_loader
                assert tuple(dl.patch_size) == aug.initial_patch_size  # the loader crops the initial patch
                assert tuple(dl.final_patch_size) == patch
                assert aug.regime.dummy_2d is dummy
                if dummy:
                    assert aug.initial_patch_size[0] == patch[0]
                batch = next(loader)
                assert tuple(batch["data"].shape) == (2, 1, *patch)
                assert tuple(batch["target"][0].shape) == (2, 1, *patch)
            finally:
                finish_loader(loader)
    first_stage = trainer_stage_augmentation(trainer, patches[0], "stage")
    first_planned = trainer_stage_augmentation(trainer, patches[0], "planned")
    assert first_stage.initial_patch_size != first_planned.initial_patch_size
    assert first_planned.initial_patch_size == (8, 9, 9)  # floor(8 / 0.85) in-plane, axis 0 kept
    assert tuple(trainer.configuration_manager.patch_size) == ANISO_PATCH


@pytest.mark.slow
def test_a_trainer_that_overrides_the_rule_is_followed(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer(root, tmp_path, monkeypatch, name="nnUNetTrainer_onlyMirror01")
    trainer.inference_allowed_mirroring_axes = (0, 1, 2)
    rule = rule_for(trainer)
    assert rule is not nnunet_rule
    rec = stage_augmentation(ANISO_PATCH, (8, 8, 8), "stage", rule).to_record(0)
    assert rec["mirror_axes"] == [0, 1] and rec["dummy_2d"] is False
    assert trainer.inference_allowed_mirroring_axes == (0, 1, 2)  # inference keeps the planned patch's mirroring
