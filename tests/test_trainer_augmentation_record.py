"""PGPS_AUGMENTATION and PGPS_CUDA_GRAPHS in a real short training (issues 12.4 and 17.2): the knobs
reach the trainer, pgps_config.json records both, and pgps_record.json holds per stage the initial
(pre-augmentation) patch, dummy 2D, rotation ranges and mirror axes -- the regime the stage's loader
was really built with (the driver reads each stage loader's initial crop as it is applied).

The reduced task with an anisotropic plan (``3d_aniso``: 8x32x32, poolings 2/3/3, as in
test_augmentation_regime.py) where the modes differ: the plan is dummy 2D (32/8 > 3), the first stages
are not. With ``planned`` every stage keeps the plan's regime; expected values by hand (dummy 2D:
in-plane floor(max(v1, v2) / 0.85), axis 0 kept): 8x8x8 -> 8x9x9, 8x24x16 -> 8x28x28, 8x32x32 ->
8x37x37. On this CPU machine PGPS_CUDA_GRAPHS=on falls back to eager steps, recorded with its reason
and logged once. Runtime: ~40 s (one 3-epoch training, 1 iteration each, no final validation)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from test_trainer_fixtures import DATASET, DATASET_ID, fold_dir, load_plans, nnunet_env, read_record, reduced_root, run

pytestmark = pytest.mark.slow

PLANS = "nnUNetPlansPGPSAniso"
DRIVER = """
import json, sys
import torch
if __name__ == "__main__":
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args("{ds}", "3d_aniso", 0, "nnUNetTrainerPGPS", "{plans}", device=torch.device("cpu"))
    apply = trainer.pgps_apply_stage
    def apply_and_report(index):
        apply(index)
        dl = trainer.dataloader_train.data_loader
        print("PGPS-TEST-LOADER " + json.dumps([index, list(dl.patch_size), list(dl.final_patch_size)]), flush=True)
    trainer.pgps_apply_stage = apply_and_report
    trainer.run_training()
"""


def _aniso_plans(root: Path) -> None:
    plans = load_plans(root)
    arch = json.loads(json.dumps(plans["configurations"]["3d_fullres"]["architecture"]))
    arch["arch_kwargs"]["strides"] = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    plans["configurations"]["3d_aniso"] = {
        "inherits_from": "3d_fullres",
        "patch_size": [8, 32, 32],
        "architecture": arch,
    }
    plans["plans_name"] = PLANS
    (root / "nnUNet_preprocessed" / DATASET / f"{PLANS}.json").write_text(json.dumps(plans, indent=1))


def test_planned_regime_and_cuda_graph_fallback_are_recorded(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    root = reduced_root(tmp_path_factory)
    _aniso_plans(root)
    driver = tmp_path / "train_only.py"
    driver.write_text(DRIVER.format(ds=DATASET_ID, plans=PLANS))
    results = tmp_path / "results"
    knobs = {"PGPS_NUM_EPOCHS": "3", "PGPS_ITERS_PER_EPOCH": "1", "PGPS_VAL_ITERS": "1", "PGPS_SEED": "3"}
    env = nnunet_env(root, results, **knobs, PGPS_AUGMENTATION="planned", PGPS_CUDA_GRAPHS="on")
    proc = run([sys.executable, str(driver)], env, timeout=1200)
    fold = fold_dir(results, "nnUNetTrainerPGPS", configuration="3d_aniso", plans=PLANS)

    cfg = json.loads((fold / "pgps_config.json").read_text())
    assert (cfg["knobs"]["augmentation"], cfg["knobs"]["cuda_graphs"]) == ("planned", "on")
    assert cfg["augmentation"] == "planned"
    graphs = cfg["cuda_graphs"]
    assert (graphs["requested"], graphs["active"]) == ("on", False)
    assert graphs["reason"] == "device cpu is not a CUDA device"
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert log.count("PGPS_CUDA_GRAPHS=on: device cpu is not a CUDA device; training with eager steps") == 1

    rec = read_record(fold)
    stages = [s["patch_size"] for s in rec["schedule"]["stages"]]
    assert stages == [[8, 8, 8], [8, 24, 16], [8, 32, 32]]
    aug = rec["augmentation"]
    assert aug["mode"] == "planned"
    assert [(e["stage"], e["patch_size"], e["initial_patch_size"]) for e in aug["stages"]] == [
        (0, [8, 8, 8], [8, 9, 9]),
        (1, [8, 24, 16], [8, 28, 28]),
        (2, [8, 32, 32], [8, 37, 37]),
    ]
    for e in aug["stages"]:
        assert e["dummy_2d"] is True and e["mirror_axes"] == [0, 1, 2]
        assert e["rotation_deg"] == {"x": [-180.0, 180.0], "y": [0.0, 0.0], "z": [0.0, 0.0]}
    # what each stage's loader was built with is what the record says
    built = [json.loads(ln.split(" ", 1)[1]) for ln in proc.stdout.splitlines() if ln.startswith("PGPS-TEST-LOADER")]
    assert built == [[e["stage"], e["initial_patch_size"], e["patch_size"]] for e in aug["stages"]]
    # the network trained the stage patches (eager steps: the forward hook counted every one)
    assert [e["train_input_shapes"] for e in rec["epochs"]] == [[{"shape": [2, 1, *p], "count": 1}] for p in stages]
    assert "cuda_graphs" not in rec  # no graphed step ran
