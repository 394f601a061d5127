"""One benchmark training in its own process (``python -m benchmarks.worker``): build the
instrumented trainer through nnU-Net's API, train, run nnU-Net's final validation, and write the
raw measurements as JSON. The parent passes the data folders and the PGPS_* budget in the
environment, exactly as ``pgps env`` + ``nnUNetv2_train`` would see them."""

from __future__ import annotations

import time

T_PROCESS_START = time.perf_counter()  # before the heavy imports: import cost is reported apart

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def _load_trainer_class(name: str) -> type:
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name(name)
    if cls is None:
        ext = os.environ.get("nnUNet_extTrainer")
        raise SystemExit(f"worker: trainer class {name!r} not found (nnUNet_extTrainer={ext})")
    return cls


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> dict:
    """Train once and return everything the aggregation needs (timestamps relative to training start)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from benchmarks.instrument import instrumented

    t_imported = time.perf_counter()
    device = torch.device(args.device)
    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / args.dataset
    plans = load_json(str(preprocessed / "nnUNetPlans.json"))
    plans["continue_training"] = False
    dataset_json = load_json(str(preprocessed / "dataset.json"))
    cls = instrumented(_load_trainer_class(args.trainer))
    trainer = cls(plans=plans, configuration="3d_fullres", fold=args.fold, dataset_json=dataset_json, device=device)
    if args.trainer == "nnUNetTrainer":  # nnU-Net's own class has no budget knobs (development baseline only)
        trainer.num_epochs = int(os.environ["PGPS_NUM_EPOCHS"])
        trainer.num_iterations_per_epoch = int(os.environ["PGPS_ITERS_PER_EPOCH"])
        trainer.num_val_iterations_per_epoch = int(os.environ["PGPS_VAL_ITERS"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_train0, c_train0 = time.perf_counter(), time.process_time()
    trainer.run_training()
    t_train1, c_train1 = time.perf_counter(), time.process_time()
    rss_training = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainer.perform_actual_validation(False)
    t_val1 = time.perf_counter()

    fold_dir = Path(trainer.output_folder)
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    record_path = fold_dir / "pgps_record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    log = trainer._bench_log()
    clock_s = (record.get("clock") or {}).get("train_wall_s") if record else None

    def rel(t: float | None) -> float | None:
        return None if t is None else t - t_train0

    iterations = [
        {
            "epoch": it["epoch"],
            "shape": it["shape"],
            "next_t0": rel(it["next_t0"]),
            "next_t1": rel(it["next_t1"]),
            "step_t0": rel(it["step_t0"]),
            "step_t1": rel(it["step_t1"]),
            "step_cpu": it["step_cpu"],
        }
        for it in log["iterations"]
    ]
    return {
        "trainer": args.trainer,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "num_epochs": trainer.num_epochs,
        "iters_per_epoch": trainer.num_iterations_per_epoch,
        "val_iters": trainer.num_val_iterations_per_epoch,
        "planned_patch": list(trainer.configuration_manager.patch_size),
        "planned_batch": int(trainer.configuration_manager.batch_size),
        "imports_s": t_imported - T_PROCESS_START,
        "setup_s": t_train0 - t_imported,
        # the one training clock (pgps.nnunet.clock), as the pipeline reports it: first epoch's start to last
        # epoch's end; run_training_s adds nnU-Net's on_train_start/end (loaders, dry run, final checkpoint)
        "training_s": clock_s if clock_s is not None else t_train1 - t_train0,
        "clock": "pgps_record.clock.train_wall_s" if clock_s is not None else "run_training",
        "run_training_s": t_train1 - t_train0,
        "training_cpu_s": c_train1 - c_train0,
        "final_validation_s": t_val1 - t_train1,
        "iterations": iterations,
        "hooks": [{**h, "t0": rel(h["t0"]), "t1": rel(h["t1"])} for h in log["hooks"]],
        "loaders": [{**ld, "t": rel(ld["t"])} for ld in log["loaders"]],
        "peak_rss_training_mib": rss_training,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_max_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "dice_foreground_mean": summary["foreground_mean"]["Dice"],
        "dice_per_class": {k: v["Dice"] for k, v in summary["mean"].items()},
        "schedule": record.get("schedule") if record else None,
        "start_bottleneck": (record.get("config") or {}).get("start_bottleneck") if record else None,
        "fold_dir": str(fold_dir),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer", required=True)
    parser.add_argument("--dataset", required=True, help="nnU-Net dataset name, e.g. Dataset901_PGPSSynth")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = run(args)
    _atomic_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
