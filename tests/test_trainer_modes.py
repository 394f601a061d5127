"""Every trainer class trains on the reduced task in-process (CPU) and the network receives the
schedule's shapes: PGPS+, RPSS (per-iteration draw), journal efficiency (1x1x1 bottleneck) and
performance (growing batch, multi-crop loading), the constant baseline, the 2d configuration and
the ResEnc-M plans. Also: the dry run leaves the starting state untouched; performance mode loads
only the planned batch's cases per iteration at every stage (time per stage printed).
Runtime: ~6 min on a loaded 2-core box, est. ~2 min on 2 free cores (2d + ResEnc planning included)."""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from pgps.nnunet.dryrun import dry_run, synthetic_batch
from pgps.nnunet.loaders import MultiCropDataLoader, build_train_loader, finish_loader
from test_trainer_fixtures import CPU_ENV, DATASET, fold_dir, load_plans, read_record, reduced_root, with_configuration

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reduced_root(tmp_path_factory)


def make_trainer(
    root: Path,
    results: Path,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    configuration: str = "3d_fullres",
    plans: str = "nnUNetPlans",
    **knobs: str,
):
    env = {
        "nnUNet_raw": str(root / "nnUNet_raw"),
        "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(results),
        **CPU_ENV,
        "PGPS_NUM_EPOCHS": "3",
        "PGPS_ITERS_PER_EPOCH": "2",
        "PGPS_VAL_ITERS": "1",
        "PGPS_SEED": "1",
        **knobs,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cls = getattr(importlib.import_module(f"pgps.trainers.{name}"), name)
    plan = load_plans(root, plans)
    plan["continue_training"] = False
    dataset_json = json.loads((root / "nnUNet_preprocessed" / DATASET / "dataset.json").read_text())
    return cls(plans=plan, configuration=configuration, fold=0, dataset_json=dataset_json, device=torch.device("cpu"))


# The reduced task's 3d_fullres plan: 32^3, batch 2, poolings 3/3/3 (tests/test_trainer_integration.py checks it).
# MICCAI PGPS: 9 stages from 16x8x8; 3 epochs keep stages 0, 4, 8. PGPS+ batches (walked back from 2): 24 at
# 16x8x8 (1024 voxels), 3 at 24x24x16 (9216), 2. Journal greedy: 10 stages from 8^3; 3 epochs keep round(i * 9 / 2)
# = 0, 4, 9: 8^3, 24x16x16, 32^3; performance batches floor(2 * 32768 / |P_k|) = 128, 10, 2.
PGPS_32 = [(16, 8, 8), (16, 16, 8), (16, 16, 16), (24, 16, 16), (24, 24, 16), (24, 24, 24), (32, 24, 24),
           (32, 32, 24), (32, 32, 32)]  # fmt: skip
EXPECTED = {  # trainer -> (batch, patch) per epoch
    "nnUNetTrainerConstant": [(2, (32, 32, 32))] * 2,
    "nnUNetTrainerPGPSPlus": [(24, (16, 8, 8)), (3, (24, 24, 16)), (2, (32, 32, 32))],
    "nnUNetTrainerPGPSEfficiency": [(2, (8, 8, 8)), (2, (24, 16, 16)), (2, (32, 32, 32))],
    "nnUNetTrainerPGPSPerformance": [(128, (8, 8, 8)), (10, (24, 16, 16)), (2, (32, 32, 32))],
}


def rpss_draws(seed: int, epoch: int, iterations: int) -> Counter:
    """The documented RPSS draw, computed here: blake2b-64 of "seed:epoch:iteration" modulo the 9 stages."""
    digests = (hashlib.blake2b(f"{seed}:{epoch}:{i}".encode(), digest_size=8).digest() for i in range(iterations))
    return Counter(PGPS_32[int.from_bytes(d, "little") % len(PGPS_32)] for d in digests)


def expected_train_shapes(trainer, epoch: int) -> dict[tuple[int, ...], int]:
    """What the network must receive in ``epoch``: the literal table above for the 3d_fullres modes; for
    other plans (2d, ResEnc) the schedule the trainer itself reports (its correctness: tests/test_schedule.py)."""
    name, ch, iters = type(trainer).__name__, trainer.num_input_channels, trainer.num_iterations_per_epoch
    if name == "nnUNetTrainerRPSS":
        return {(2, ch, *p): n for p, n in rpss_draws(1, epoch, iters).items()}
    if name in EXPECTED:
        batch, patch = EXPECTED[name][epoch]
        return {(batch, ch, *patch): iters}
    stage = trainer.pgps_schedule.stage_at(epoch)
    return {(stage.batch_size, ch, *stage.patch_size): iters}


def check_record(trainer) -> dict:
    rec = read_record(Path(trainer.output_folder))
    planned = list(trainer.configuration_manager.patch_size)
    bs = trainer.configuration_manager.batch_size
    assert [e["epoch"] for e in rec["epochs"]] == list(range(trainer.num_epochs))
    for e in rec["epochs"]:
        got = {tuple(s["shape"]): s["count"] for s in e["train_input_shapes"]}
        assert got == expected_train_shapes(trainer, e["epoch"]), e["epoch"]
        assert e["val_input_shapes"] == [
            {"shape": [bs, trainer.num_input_channels, *planned], "count": trainer.num_val_iterations_per_epoch}
        ]
    return rec


@pytest.mark.parametrize(
    "name",
    [
        "nnUNetTrainerConstant",
        "nnUNetTrainerPGPSPlus",
        "nnUNetTrainerRPSS",
        "nnUNetTrainerPGPSEfficiency",
        "nnUNetTrainerPGPSPerformance",
    ],
)
def test_mode_trains_on_its_schedule(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    kn = {
        "nnUNetTrainerRPSS": {"PGPS_ITERS_PER_EPOCH": "4"},
        "nnUNetTrainerConstant": {"PGPS_NUM_EPOCHS": "2", "PGPS_CODECARBON": "DEU"},
    }
    kn = kn.get(name, {})
    trainer = make_trainer(root, tmp_path, name, monkeypatch, **kn)
    trainer.run_training()
    rec = check_record(trainer)
    if name == "nnUNetTrainerConstant":
        assert len(trainer.pgps_schedule.stages) == 1 and trainer.oversample_foreground_percent == pytest.approx(0.33)
        # the baseline is energy-tracked like the curricula: one codecarbon task for its one stage
        fold = Path(trainer.output_folder)
        assert len((fold / "emissions.csv").read_text().strip().splitlines()) == 2  # header + the run's row
        (tasks,) = [p for p in fold.glob("emissions_*.csv") if p.name != "emissions.csv"]
        assert tasks.read_text().splitlines()[1].split(",")[0] == "stage00_32x32x32_b2"
    if name == "nnUNetTrainerRPSS":
        seen = {tuple(s["shape"][2:]) for e in rec["epochs"] for s in e["train_input_shapes"]}
        assert len(seen) >= 2 and seen <= set(PGPS_32)  # several sizes really trained, none outside the stages
    # journal modes: the 8^3 patch is a 1x1x1 bottleneck after 3 poolings, trained with instance norm in train mode
    assert (Path(trainer.output_folder) / "checkpoint_final.pth").is_file()


def test_2d_configuration_two_axis_schedule(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_configuration(root, "2d")
    trainer = make_trainer(root, tmp_path, "nnUNetTrainerPGPS", monkeypatch, configuration="2d", PGPS_NUM_EPOCHS="4")
    assert len(trainer.pgps_schedule.planned_patch_size) == 2
    trainer.run_training()
    rec = check_record(trainer)
    assert len({tuple(e["patch_size"]) for e in rec["epochs"]}) == 4
    assert fold_dir(tmp_path, "nnUNetTrainerPGPS", "2d") == Path(trainer.output_folder)


def test_resenc_m_plans(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_configuration(root, "resenc")
    # one iteration an epoch: ResEnc-M plans batch 8 (the default plans 2) through a deeper encoder, ~5x the step
    trainer = make_trainer(
        root, tmp_path, "nnUNetTrainerPGPS", monkeypatch, plans="nnUNetResEncUNetMPlans", PGPS_NUM_EPOCHS="2",
        PGPS_ITERS_PER_EPOCH="1",
    )  # fmt: skip
    assert trainer.configuration_manager.network_arch_class_name.endswith("ResidualEncoderUNet")
    trainer.run_training()
    check_record(trainer)


def _state(trainer) -> tuple[dict, dict, torch.Tensor]:
    return (
        copy.deepcopy(trainer.network.state_dict()),
        copy.deepcopy(trainer.optimizer.state_dict()),
        torch.get_rng_state(),
    )


def test_dry_run_restores_weights_optimizer_and_rng(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer(root, tmp_path, "nnUNetTrainerPGPS", monkeypatch)
    trainer.initialize()
    trainer.train_step(synthetic_batch(trainer, (16, 8, 8), 2))  # momentum buffers exist now
    w0, o0, r0 = _state(trainer)
    seconds = dry_run(trainer, trainer.configuration_manager.patch_size, trainer.configuration_manager.batch_size)
    w1, o1, r1 = _state(trainer)
    assert seconds > 0
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert o0["state"].keys() == o1["state"].keys() and len(o0["state"]) > 0
    assert all(torch.equal(o0["state"][k]["momentum_buffer"], o1["state"][k]["momentum_buffer"]) for k in o0["state"])
    assert torch.equal(r0, r1)
    # and the dry run did train: without the restore the weights would differ
    trainer.train_step(synthetic_batch(trainer, trainer.configuration_manager.patch_size, 2))
    w2 = trainer.network.state_dict()
    assert any(not torch.equal(w0[k], w2[k]) for k in w0)


def test_performance_loads_only_the_planned_batchs_cases_while_batch_grows(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer(root, tmp_path, "nnUNetTrainerPGPSPerformance", monkeypatch, PGPS_NUM_EPOCHS="1000")
    trainer.initialize()
    planned_bs = trainer.configuration_manager.batch_size
    timings = []
    for stage in trainer.pgps_schedule.stages:
        loader = build_train_loader(trainer, stage.patch_size, stage.batch_size, 0.5, cases_per_batch=planned_bs)
        dl = loader.data_loader
        assert isinstance(dl, MultiCropDataLoader) == (stage.batch_size > planned_bs)
        next(loader)  # warm-up
        loads0 = getattr(dl, "cases_loaded", 0)
        t0 = time.perf_counter()
        for _ in range(3):
            batch = next(loader)
        dt = (time.perf_counter() - t0) / 3
        assert tuple(batch["data"].shape) == (stage.batch_size, 1, *stage.patch_size)
        assert [tuple(t.shape[2:]) for t in batch["target"]][0] == stage.patch_size
        if isinstance(dl, MultiCropDataLoader):
            assert (dl.cases_loaded - loads0) / 3 == planned_bs  # loads the planned batch's cases only
        timings.append({"patch": stage.patch_size, "batch": stage.batch_size, "s_per_iter": round(dt, 4)})
        finish_loader(loader)
    print("performance-mode loader time per iteration by stage:", json.dumps(timings))
