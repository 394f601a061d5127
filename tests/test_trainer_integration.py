"""End-to-end through nnU-Net's own CLI on the reduced task (CPU): PGPS training, the shapes the
network really received, the training clock, codecarbon per stage, prediction with the PGPS
checkpoint, trainer lookup via nnUNet_extTrainer, SIGKILL mid-curriculum + ``--c`` resume.
Runtime: ~5.5 min on a loaded 2-core box (load ~8), est. ~2 min on 2 free cores."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
from pathlib import Path

import nibabel as nib
import nnunetv2
import numpy as np
import pytest
import torch

from pgps.pipeline import nnunet_cli
from test_trainer_fixtures import (
    BIN,
    DATASET_ID,
    TRAINERS_DIR,
    blocking_trainer,
    fold_dir,
    load_plans,
    nnunet_env,
    read_record,
    reduced_root,
    run,
    start_until_blocked,
)

pytestmark = pytest.mark.slow

BUDGET = {"PGPS_NUM_EPOCHS": "6", "PGPS_ITERS_PER_EPOCH": "1", "PGPS_VAL_ITERS": "1", "PGPS_SEED": "7"}


def train_cmd(trainer: str = "nnUNetTrainerPGPS", *extra: str) -> list[str]:
    """nnUNetv2_train as the pipeline starts it: its entry function (~14 CPU-s less per final validation; the console
    script itself is run by test_trainer_checkpoint.py, test_trainer_variants.py and the core-install test)."""
    nnunet = nnunet_cli.command("nnUNetv2_train")
    return [*nnunet, str(DATASET_ID), "3d_fullres", "0", "-tr", trainer, "-device", "cpu", *extra]


# The reduced task plans a 32^3 patch, batch 2, poolings 3/3/3 (checked below). PGPS grows it in 9 stages from
# 16x8x8; 6 epochs keep stages round(i * 8 / 5) = 0, 2, 3, 5, 6, 8, one epoch each.
PLANNED = [32, 32, 32]
STAGES = [[16, 8, 8], [16, 16, 16], [24, 16, 16], [24, 24, 24], [32, 24, 24], [32, 32, 32]]
TASK_NAMES = [f"stage{i:02d}_{'x'.join(map(str, p))}_b2" for i, p in enumerate(STAGES)]


def test_the_reduced_task_plans_what_these_tests_expect(root: Path) -> None:
    conf = load_plans(root)["configurations"]["3d_fullres"]
    strides = conf["architecture"]["arch_kwargs"]["strides"]
    assert conf["patch_size"] == PLANNED and conf["batch_size"] == 2
    assert [sum(1 for s in strides if s[axis] == 2) for axis in range(3)] == [3, 3, 3]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reduced_root(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted PGPS run via ``nnUNetv2_train`` with codecarbon and the dry run on."""
    results = tmp_path_factory.mktemp("ref_results")
    env = nnunet_env(root, results, **BUDGET, PGPS_CODECARBON="DEU", PGPS_DRY_RUN="on")
    run(train_cmd(), env)
    return fold_dir(results, "nnUNetTrainerPGPS")


def test_network_saw_the_schedule_and_validated_at_full_patch(root: Path, reference: Path) -> None:
    planned, bs = PLANNED, 2
    rec = read_record(reference)
    assert [e["epoch"] for e in rec["epochs"]] == list(range(6))
    for e, patch in zip(rec["epochs"], STAGES):
        assert e["patch_size"] == patch and e["batch_size"] == 2
        assert e["train_input_shapes"] == [{"shape": [2, 1, *patch], "count": 1}]
        assert e["val_input_shapes"] == [{"shape": [bs, 1, *planned], "count": 1}]
        assert np.isfinite(e["train_loss"]) and e["wall_time"] > 0
    stages = rec["schedule"]["stages"]
    assert [(s["patch_size"], s["batch_size"], s["start_epoch"], s["end_epoch"]) for s in stages] == [
        (p, 2, k, k + 1) for k, p in enumerate(STAGES)
    ]
    # the default augmentation regime (PGPS_AUGMENTATION=stage): nnU-Net's rule on each stage patch; iso patches
    # get 3D +-30 deg about every axis; initial crops by hand (test_augmentation_regime.py's formula)
    aug = rec["augmentation"]
    assert aug["mode"] == "stage" and [e["patch_size"] for e in aug["stages"]] == STAGES
    assert [e["stage"] for e in aug["stages"]] == list(range(6))
    assert (aug["stages"][0]["initial_patch_size"], aug["stages"][-1]["initial_patch_size"]) == ([21, 12, 17], [51] * 3)
    for e in aug["stages"]:
        assert e["dummy_2d"] is False and e["mirror_axes"] == [0, 1, 2]
        assert e["rotation_deg"] == {axis: [-30.0, 30.0] for axis in "xyz"}
    cfg = json.loads((reference / "pgps_config.json").read_text())
    assert (cfg["augmentation"], cfg["cuda_graphs"]["requested"], cfg["cuda_graphs"]["active"]) == (
        "stage",
        "off",
        False,
    )
    # the plan the run copied for inference still holds the planned patch
    saved = json.loads((reference.parent / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert saved["patch_size"] == planned and saved["batch_size"] == bs
    # budget knobs actually used, and the dry run at the planned size, are on disk
    cfg = json.loads((reference / "pgps_config.json").read_text())
    assert cfg["knobs"]["num_epochs"] == 6 and cfg["knobs"]["iters_per_epoch"] == 1 and cfg["knobs"]["seed"] == 7
    assert [d["patch_size"] for d in cfg["dry_runs"]] == [planned]
    # final sliding-window validation ran
    summary = json.loads((reference / "validation" / "summary.json").read_text())
    assert "foreground_mean" in summary


def test_clock_covers_epoch_end_work_and_energy_covers_the_clock(reference: Path) -> None:
    """One training clock (CONTRACTS.md): epochs end after nnU-Net's on_epoch_end work, the phases
    of every epoch are recorded, the final validation is timed apart, codecarbon spans the clock."""
    rec = read_record(reference)
    clock, epochs = rec["clock"], rec["epochs"]
    assert clock["train_wall_s"] == pytest.approx(epochs[-1]["epoch_end"] - epochs[0]["epoch_start"])
    assert clock["sessions"] == [
        {"first_epoch": 0, "last_epoch": 5, "start": epochs[0]["epoch_start"], "end": epochs[-1]["epoch_end"]}
    ]
    assert (clock["dead_s"], clock["lost_s"]) == (0.0, 0.0)
    assert sum(clock["breakdown_s"].values()) == pytest.approx(clock["train_wall_s"])
    assert 0 <= clock["breakdown_s"]["other"] < 0.5 * clock["train_wall_s"]
    assert clock["final_validation_s"] > 0  # nnUNetv2_train validated after training
    for e in epochs:
        t = e["timing_s"]
        assert set(t) == {"network_steps", "loader_wait", "validation", "epoch_end", "stage_switch"}
        assert t["network_steps"] > 0 and t["validation"] > 0 and t["loader_wait"] > 0
        assert t["epoch_end"] > 0 and t["stage_switch"] > 0  # 6 epochs of a 6-stage curriculum: a switch each
        assert sum(t.values()) <= e["epoch_end"] - e["epoch_start"] + 1e-3
        assert e["wall_time"] == pytest.approx(e["epoch_end"] - e["epoch_start"])
    # the best checkpoint is written inside on_epoch_end: before that epoch's recorded end
    assert (reference / "checkpoint_best.pth").stat().st_mtime <= max(e["epoch_end"] for e in epochs)
    cfg = json.loads((reference / "pgps_config.json").read_text())
    assert cfg["codecarbon"] == {"country": "DEU", "tracking_mode": "process"}
    with open(reference / "emissions.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["tracking_mode"] == "process"
    # the stage tasks run from the first epoch's stage switch to the tracker's stop right after the last
    # epoch's end (the total row's "duration" is not usable: codecarbon 3.3.2 restarts it at every start_task)
    (tasks,) = [p for p in reference.glob("emissions_*.csv") if p.name != "emissions.csv"]
    with open(tasks, newline="") as fh:
        tracked = sum(float(t["duration"]) for t in csv.DictReader(fh))
    assert tracked == pytest.approx(clock["train_wall_s"], abs=1.0 + 0.02 * clock["train_wall_s"])


def test_progress_png_drawn_after_the_last_epoch(reference: Path) -> None:
    """Throttled drawing (pgps.nnunet.progress) still leaves the final state on disk, whole."""
    png = reference / "progress.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_mtime >= read_record(reference)["epochs"][-1]["epoch_end"] - 1.0
    assert not list(reference.glob(".progress_*"))


def test_checkpoint_carries_schedule_and_loads_as_plain_data(root: Path, reference: Path) -> None:
    """The checkpoint a real training wrote passes the resume's safe load (weights_only, structure checked)."""
    from pgps.nnunet.checkpoint import load_safely

    ckpt = load_safely(str(reference / "checkpoint_final.pth"))
    assert ckpt["pgps"]["schedule"] == read_record(reference)["schedule"]
    assert [s["patch_size"] for s in ckpt["pgps"]["schedule"]["stages"]] == STAGES
    assert ckpt["current_epoch"] == 6 and ckpt["trainer_name"] == "nnUNetTrainerPGPS"


def test_codecarbon_one_row_per_session_and_one_task_per_stage(root: Path, reference: Path) -> None:
    with open(reference / "emissions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    assert rows[0]["country_iso_code"] == "DEU" and float(rows[0]["duration"]) > 0
    assert float(rows[0]["energy_consumed"]) > 0 and rows[0]["tracking_mode"]
    task_files = [p for p in reference.glob("emissions_*.csv") if p.name != "emissions.csv"]
    assert len(task_files) == 1
    with open(task_files[0], newline="") as fh:
        tasks = list(csv.DictReader(fh))
    assert [t["task_name"] for t in tasks] == TASK_NAMES
    assert all(float(t["duration"]) > 0 for t in tasks)


def test_predict_with_pgps_checkpoint_via_nnunet_cli(root: Path, reference: Path, tmp_path: Path) -> None:
    images = root / "nnUNet_raw" / "Dataset901_PGPSSynth" / "imagesTs"
    out = tmp_path / "pred"
    env = nnunet_env(root, reference.parents[2])
    run(
        [
            str(BIN / "nnUNetv2_predict"),
            "-i",
            str(images),
            "-o",
            str(out),
            "-d",
            str(DATASET_ID),
            "-c",
            "3d_fullres",
            "-tr",
            "nnUNetTrainerPGPS",
            "-f",
            "0",
            "--disable_tta",
            "-device",
            "cpu",
            "-npp",
            "1",
            "-nps",
            "1",
        ],
        env,
    )
    inputs = sorted(images.glob("*_0000.nii.gz"))
    assert len(inputs) == 2
    for img in inputs:
        pred = out / img.name.replace("_0000.nii.gz", ".nii.gz")
        seg = np.asarray(nib.load(pred).dataobj)
        assert seg.shape == nib.load(img).shape
        assert set(np.unique(seg)) <= {0, 1, 2}


def test_all_trainers_found_by_nnunet_lookup(root: Path) -> None:
    """Every class src/pgps/trainers ships (pgps.trainer_catalog, read from the sources) is found by
    nnU-Net's own lookup with the curriculum mode the catalog reads; the paper's six are among them."""
    from pgps.trainer_catalog import trainer_modes

    catalog = {n: m for n, m in trainer_modes().items() if n != "nnUNetTrainer"}
    paper = {
        "nnUNetTrainerConstant": "constant",
        "nnUNetTrainerPGPS": "pgps",
        "nnUNetTrainerPGPSPlus": "pgps+",
        "nnUNetTrainerRPSS": "rpss",
        "nnUNetTrainerPGPSEfficiency": "efficiency",
        "nnUNetTrainerPGPSPerformance": "performance",
    }
    assert paper.items() <= catalog.items()
    code = (
        "import json, sys\n"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
        "print(json.dumps({n: [find(n).pgps_mode, find(n).__module__] for n in sys.argv[1:]}))\n"
    )
    proc = run([str(BIN / "python"), "-c", code, *sorted(catalog)], nnunet_env(root))
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {n: m for n, (m, _) in found.items()} == catalog
    # imported from nnUNet_extTrainer as top-level modules, nothing added to nnunetv2 in site-packages
    assert all(found[name][1] == name for name in paper)
    site = Path(nnunetv2.__file__).parent
    assert not [p for p in site.rglob("*.py") if "nnUNetTrainerPGPS" in p.read_text(errors="ignore")]


def test_sigkill_mid_curriculum_then_resume_matches_uninterrupted(root: Path, reference: Path, tmp_path: Path) -> None:
    """Killed at the start of epoch 3 (its later curriculum stage applied), resumed with ``--c``: the same
    epochs, shapes and losses as the uninterrupted reference; the clock has two sessions and the dead gap."""
    results = tmp_path / "results"
    name = blocking_trainer(tmp_path / "trainers")  # nnUNetTrainerPGPS plus a stop at a known point
    env = nnunet_env(root, results, **BUDGET, TEST_SKIP_FINAL_VALIDATION="1")  # the reference checks validation
    env["nnUNet_extTrainer"] = os.pathsep.join([str(TRAINERS_DIR), str(tmp_path / "trainers")])
    fold = fold_dir(results, name)
    proc = start_until_blocked(train_cmd(name), {**env, "TEST_BLOCK_AT_EPOCH": "3"})
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)  # never torn
    assert latest["current_epoch"] == 3
    assert [e["epoch"] for e in read_record(fold)["epochs"]] == [0, 1, 2]

    # a different budget is refused with a clear message instead of silently restarting the curriculum
    bad = subprocess.run(
        train_cmd(name, "--c"),
        env={**env, "PGPS_NUM_EPOCHS": "9"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0
    assert (
        "checkpoint_latest.pth: PGPS_NUM_EPOCHS='9' conflicts with the checkpoint's PGPS_NUM_EPOCHS=6; unset it"
        in bad.stderr
    )

    # --c without any PGPS_* variable: the run's knobs come from the checkpoint (issue 12.3)
    run(train_cmd(name, "--c"), {k: v for k, v in env.items() if not k.startswith("PGPS_")})
    knobs = json.loads((fold / "pgps_config.json").read_text())["knobs"]
    assert (knobs["num_epochs"], knobs["iters_per_epoch"], knobs["seed"]) == (6, 1, 7)
    rec, ref = read_record(fold), read_record(reference)
    assert [e["epoch"] for e in rec["epochs"]] == list(range(6))  # no gaps, no duplicates
    assert [e["patch_size"] for e in rec["epochs"]] == [e["patch_size"] for e in ref["epochs"]]
    assert [e["train_input_shapes"] for e in rec["epochs"]] == [e["train_input_shapes"] for e in ref["epochs"]]
    assert [e["val_input_shapes"] for e in rec["epochs"]] == [e["val_input_shapes"] for e in ref["epochs"]]
    (resume,) = rec["resumes"]
    assert (resume["at_epoch"], resume["dropped_epochs"], resume["lost_s"]) == (3, 0, 0.0)
    clock = rec["clock"]
    first, second = clock["sessions"]
    assert (first["first_epoch"], first["last_epoch"], second["first_epoch"], second["last_epoch"]) == (0, 2, 3, 5)
    assert clock["dead_s"] == pytest.approx(second["start"] - first["end"]) and clock["dead_s"] > 0
    assert clock["train_wall_s"] == pytest.approx(first["end"] - first["start"] + second["end"] - second["start"])
    assert (fold / "checkpoint_final.pth").is_file() and not (fold / "checkpoint_latest.pth").exists()
    losses = [abs(a["train_loss"] - b["train_loss"]) for a, b in zip(rec["epochs"], ref["epochs"])]
    print(f"max |train loss difference| resumed vs uninterrupted run: {max(losses):.3g} (per epoch {losses})")
    # same seed, single-process loading, per-epoch reseeding: the killed+resumed run repeats the other
    assert max(losses) <= 1e-6
    assert not list(fold.glob(".*.partial*"))  # no temp file of a killed write left behind
