"""Seconds per training step at every PGPS stage shape, in ONE process, on synthetic batches of
the loader's shapes (deep-supervision targets included): separates what the network costs per
shape from loading and from the epoch loop, and measures each shape's first-call warm-up (on CUDA
with torch.compile: the recompile). Also splits the step into forward+loss, backward, clip+optimizer.

    .venv/bin/python -m benchmarks.stage_speed [--patch 128 128 128] [--device cuda] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _sync(device: object) -> None:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def time_shapes(trainer: object, shapes: list[tuple[tuple[int, ...], int]], steps: int) -> list[dict]:
    """First call and steady median of ``train_step`` per (patch, batch); weights restored after each."""
    import statistics

    from pgps.nnunet.dryrun import synthetic_batch

    rows = []
    for patch, batch in shapes:
        data = synthetic_batch(trainer, patch, batch)
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            trainer.train_step(data)
            _sync(trainer.device)
            times.append(time.perf_counter() - t0)
        parts = [split_step(trainer, data) for _ in range(steps)]
        split = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
        rows.append(
            {
                "patch_size": list(patch),
                "batch_size": batch,
                "first_s": times[0],
                "step_s": statistics.median(times[1:]),
                **split,
            }
        )
        print(
            f"{'x'.join(map(str, patch)):>12} b{batch:<3} first {times[0]:7.3f} s  steady {rows[-1]['step_s']:7.3f} s"
            f"  (forward+loss {split['forward_loss_s']:.3f}, backward {split['backward_s']:.3f}, "
            f"clip+optimizer {split['clip_optimizer_s']:.3f})",
            flush=True,
        )
    return rows


def split_step(trainer: object, data: dict) -> dict:
    """nnU-Net 2.8's ``train_step``, timed in three parts: which part is a fixed cost per step
    (the same at every patch size) and which scales with the voxels."""
    import torch
    from nnunetv2.utilities.helpers import dummy_context

    device = trainer.device
    x = data["data"].to(device)
    y = [t.to(device) for t in data["target"]] if isinstance(data["target"], list) else data["target"].to(device)
    amp = torch.autocast(device.type, enabled=True) if device.type == "cuda" else dummy_context()
    marks = [time.perf_counter()]
    trainer.optimizer.zero_grad(set_to_none=True)
    with amp:
        loss = trainer.loss(trainer.network(x), y)
    _sync(device)
    marks.append(time.perf_counter())
    scaler = trainer.grad_scaler
    (scaler.scale(loss) if scaler is not None else loss).backward()
    _sync(device)
    marks.append(time.perf_counter())
    if scaler is not None:
        scaler.unscale_(trainer.optimizer)
    torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), 12)
    if scaler is not None:
        scaler.step(trainer.optimizer)
        scaler.update()
    else:
        trainer.optimizer.step()
    _sync(device)
    marks.append(time.perf_counter())
    return {
        "forward_loss_s": marks[1] - marks[0],
        "backward_s": marks[2] - marks[1],
        "clip_optimizer_s": marks[3] - marks[2],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="Dataset901_PGPSSynth")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "tmp")
    p.add_argument("--patch", type=int, nargs="+", default=None, help="override the planned patch (e.g. 128 128 128)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--modes", nargs="+", default=["pgps", "pgps+"])
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = p.parse_args()

    os.environ.setdefault("nnUNet_preprocessed", str(args.work / "nnUNet_preprocessed"))
    os.environ.setdefault("nnUNet_raw", str(args.work / "nnUNet_raw"))
    os.environ.setdefault("nnUNet_results", str(args.work / "stage_speed_results"))
    if args.device == "cpu":
        os.environ.setdefault("nnUNet_compile", "f")
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from pgps.nnunet.geometry import poolings_from_strides
    from pgps.schedule import build_schedule

    pre = Path(os.environ["nnUNet_preprocessed"]) / args.dataset
    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False
    if args.patch:
        plans["configurations"]["3d_fullres"]["patch_size"] = list(args.patch)
    trainer = nnUNetTrainer(
        plans=plans,
        configuration="3d_fullres",
        fold=0,
        dataset_json=load_json(str(pre / "dataset.json")),
        device=torch.device(args.device),
    )
    trainer.initialize()
    cm = trainer.configuration_manager
    planned, batch = tuple(cm.patch_size), int(cm.batch_size)
    pools = poolings_from_strides(cm.network_arch_init_kwargs["strides"], len(planned))
    shapes: list[tuple[tuple[int, ...], int]] = []
    for mode in args.modes:
        sched = build_schedule(planned, pools, 100, batch, mode=mode)
        shapes += [
            (tuple(s.patch_size), s.batch_size)
            for s in sched.stages
            if (tuple(s.patch_size), s.batch_size) not in shapes
        ]
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, planned "
        f"{list(planned)} b{batch}, poolings {list(pools)}"
    )
    # warm the process once at the planned shape so the first row does not pay process-wide start-up
    time_shapes(trainer, [(planned, batch)], 1)
    rows = time_shapes(trainer, shapes, args.steps)
    if args.out:
        args.out.write_text(json.dumps({"device": args.device, "planned": list(planned), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
