"""Resuming never runs code from a checkpoint (issue 15.3): ``checkpoint.load_safely`` loads with
``torch.load(weights_only=True)`` plus the numpy types nnU-Net's logger stores, and checks the
structure of what the resume reads (nnU-Net's keys and the PGPS entry) before any of it is used.

A crafted checkpoint whose pickle would run code (``__reduce__`` -> ``os.system`` writing a marker
file) is refused with one line naming the file, and the marker never appears: directly, and through
``nnUNetv2_train --c`` (slow). That a normal resume still works is shown by the resume tests of real
trainings (test_trainer_integration.py, test_trainer_timebudget.py); here, a checkpoint with the
structure and value types a PGPS trainer writes loads. Runtime: ~3 s (+ ~30 s for the CLI check)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from pgps.errors import PGPSError
from pgps.nnunet import checkpoint


class _RunsCode:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _plain_checkpoint() -> dict:
    """The structure and value types of a PGPS trainer's checkpoint (numpy scalars in the log)."""
    return {
        "network_weights": {"conv.weight": torch.ones(2, 1, 3, 3, 3)},
        "optimizer_state": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.01}]},
        "grad_scaler_state": None,
        "logging": {
            "mean_fg_dice": [np.float64(0.5)],
            "train_losses": [np.float32(-0.3)],
            "dice_per_class_or_region": [[np.float64(0.4), np.float64(0.6)]],
            "lrs": [0.01],
            "arr": [np.arange(3, dtype=np.int64)],
        },
        "_best_ema": np.float64(0.45),
        "current_epoch": 3,
        "init_args": {"plans": {}, "configuration": "3d_fullres", "fold": 0, "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainerPGPS",
        "inference_allowed_mirroring_axes": (0, 1, 2),
        "pgps": {
            "schedule": {"mode": "pgps", "stages": [{"patch_size": [32, 32, 32], "batch_size": 2}]},
            "knobs": {"num_epochs": 6},
            "time_plan": None,
        },
    }


def test_a_checkpoint_of_plain_data_loads(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pth"
    torch.save(_plain_checkpoint(), path)
    ckpt = checkpoint.load_safely(str(path))
    assert ckpt["current_epoch"] == 3 and ckpt["logging"]["train_losses"][0] == np.float32(-0.3)
    assert torch.equal(ckpt["network_weights"]["conv.weight"], torch.ones(2, 1, 3, 3, 3))


@pytest.mark.parametrize("where", ["top", "logging", "pgps"])
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "MARKER"
    ckpt = _plain_checkpoint()
    evil = _RunsCode(marker)
    if where == "top":
        ckpt["extra"] = evil
    elif where == "logging":
        ckpt["logging"]["train_losses"].append(evil)
    else:
        ckpt["pgps"]["knobs"] = evil
    path = tmp_path / "checkpoint_latest.pth"
    torch.save(ckpt, path)
    assert not marker.exists()
    with pytest.raises(PGPSError) as err:
        checkpoint.load_safely(str(path))
    text = str(err.value)
    assert text.startswith(f"{path}: refused to load: not a checkpoint of plain data and tensors (")
    assert "system" in text and "\n" not in text
    assert not marker.exists()
    # the guard can fail: the unsafe load runs the command
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda c: c.pop("pgps"), "not written by a PGPS trainer (no 'pgps' entry)"),
        (lambda c: c.update(pgps="yes"), "its 'pgps' entry is a str, not a dict"),
        (lambda c: c["pgps"].pop("knobs"), "its 'pgps' entry lacks 'knobs'"),
        (lambda c: c["pgps"].update(time_plan=[1]), "its 'pgps' entry lacks 'time_plan' or it is not a dict"),
        (lambda c: c["pgps"]["schedule"].update(stages="all"), "its PGPS schedule has no list of stages"),
        (lambda c: c.update(current_epoch="3"), "'current_epoch' missing or not a int"),
        (lambda c: c.update(current_epoch=True), "'current_epoch' missing or not a int"),
        (lambda c: c.update(current_epoch=-1), "current_epoch -1 is negative"),
        (lambda c: c.pop("network_weights"), "'network_weights' missing or not a dict"),
        (lambda c: c.pop("_best_ema"), "'_best_ema' missing"),
    ],
)
def test_a_damaged_structure_is_one_line_naming_the_file(tmp_path: Path, damage, needle: str) -> None:
    ckpt = _plain_checkpoint()
    damage(ckpt)
    path = tmp_path / "checkpoint_latest.pth"
    torch.save(ckpt, path)
    with pytest.raises(PGPSError) as err:
        checkpoint.load_safely(str(path))
    assert str(err.value).startswith(f"{path}: ") and needle in str(err.value) and "\n" not in str(err.value)


def test_a_torn_or_missing_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pth"
    torch.save(_plain_checkpoint(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(PGPSError, match=f"^{path}: refused to load") as err:
        checkpoint.load_safely(str(path))
    assert "\n" not in str(err.value)
    with pytest.raises(PGPSError, match="no such checkpoint"):
        checkpoint.load_safely(str(tmp_path / "nope.pth"))


@pytest.mark.slow
def test_nnunet_train_c_refuses_a_crafted_checkpoint(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    from test_trainer_fixtures import BIN, DATASET_ID, fold_dir, nnunet_env, reduced_root

    root = reduced_root(tmp_path_factory)
    results = tmp_path / "results"
    fold = fold_dir(results, "nnUNetTrainerPGPS")
    fold.mkdir(parents=True)
    marker = tmp_path / "MARKER"
    ckpt = _plain_checkpoint()
    ckpt["logging"]["lrs"] = _RunsCode(marker)
    torch.save(ckpt, fold / "checkpoint_latest.pth")
    cmd = [str(BIN / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", "nnUNetTrainerPGPS"]
    env = nnunet_env(root, results, PGPS_NUM_EPOCHS="6", PGPS_ITERS_PER_EPOCH="1", PGPS_VAL_ITERS="1")
    proc = subprocess.run([*cmd, "-device", "cpu", "--c"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert f"{fold / 'checkpoint_latest.pth'}: refused to load: not a checkpoint of plain data" in proc.stderr
    assert not marker.exists()
    assert not (fold / "pgps_record.json").exists()  # refused before anything of the run started
