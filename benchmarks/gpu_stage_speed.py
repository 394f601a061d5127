"""Seconds per training step of nnU-Net's default 3D U-Net at every PGPS stage shape, eager and
under torch.compile, on one device: the GPU side of `make bench`.

Needs only torch, dynamic_network_architectures and nnU-Net's loss modules (no SimpleITK, no
dataset), so it runs on a bare GPU box. Builds the network nnU-Net 2.8's default planner gives a
128^3 patch with 5 poolings per axis (6 stages, 32..320 features, instance norm, deep
supervision), nnU-Net's DC+CE deep-supervision loss, SGD(nesterov, 0.99) and autocast with a
GradScaler, as nnUNetTrainer.train_step does. Per stage shape: first call (for compile: the
recompile a new patch shape triggers), steady median, peak memory. Then the predicted wall-time
ratio of the curriculum vs constant patch from the measured step times, next to the voxel fraction.

    python benchmarks/gpu_stage_speed.py --device cuda --out results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: E402
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss  # noqa: E402
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper  # noqa: E402
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss  # noqa: E402

from pgps.schedule import build_schedule  # noqa: E402


def make_network(poolings: list[int], num_classes: int) -> torch.nn.Module:
    n_stages = max(poolings) + 1
    strides = [[1, 1, 1]] + [[2 if p > i else 1 for p in poolings] for i in range(n_stages - 1)]
    return PlainConvUNet(
        input_channels=1,
        n_stages=n_stages,
        features_per_stage=[min(32 * 2**i, 320) for i in range(n_stages)],
        conv_op=torch.nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * n_stages,
        strides=strides,
        n_conv_per_stage=[2] * n_stages,
        num_classes=num_classes,
        n_conv_per_stage_decoder=[2] * (n_stages - 1),
        conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=True,
    )


def make_loss(n_scales: int) -> torch.nn.Module:
    loss = DC_and_CE_loss(
        {"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        ignore_label=None,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
    weights = [1 / (2**i) for i in range(n_scales)]
    weights[-1] = 0
    total = sum(weights)
    return DeepSupervisionWrapper(loss, [w / total for w in weights])


def batch_for(patch: tuple[int, ...], batch: int, poolings: list[int], classes: int, device: torch.device):
    x = torch.randn(batch, 1, *patch, device=device)
    targets = []
    for i in range(max(poolings)):
        shape = [max(1, s // 2 ** min(i, p)) for s, p in zip(patch, poolings)]
        targets.append(torch.randint(0, classes, (batch, 1, *shape), device=device).float())
    return x, targets


def time_shape(step, patch, batch, poolings, classes, device, steps: int) -> dict:
    x, y = batch_for(patch, batch, poolings, classes, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        step(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    row = {"patch_size": list(patch), "batch_size": batch, "first_s": times[0], "step_s": statistics.median(times[1:])}
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    sched = build_schedule(args.patch_size, args.poolings, args.epochs, args.batch_size, mode="pgps")
    classes = 3
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "schedule": sched.to_dict(),
        "eager": [],
        "compiled": [],
        "compile_dynamic": args.dynamic,
    }

    def save() -> None:
        if args.out:
            tmp = Path(args.out + ".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(args.out)

    for label in ("eager", "compiled"):
        if (label == "compiled" and not args.compile) or (label == "eager" and args.skip_eager):
            continue
        torch.manual_seed(0)
        net = make_network(args.poolings, classes).to(device)
        fwd = torch.compile(net, dynamic=args.dynamic) if label == "compiled" else net
        loss_fn = make_loss(max(args.poolings))
        opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
        scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None

        def step(x, y, fwd=fwd, net=net, opt=opt, scaler=scaler, loss_fn=loss_fn):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                loss = loss_fn(fwd(x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()

        shapes = [st.patch_size for st in sched.stages]
        if label == "compiled" and args.compile_shapes:
            shapes = [shapes[i] for i in sorted({0, len(shapes) // 2, len(shapes) - 1})]
        for patch in shapes:
            row = time_shape(step, patch, args.batch_size, args.poolings, classes, device, args.steps)
            result[label].append(row)
            print(label, row, flush=True)
            save()

    if not result["eager"]:
        return result
    eager = {tuple(r["patch_size"]): r["step_s"] for r in result["eager"]}
    full = eager[tuple(sched.planned_patch_size)]
    cost = sum(st.num_epochs * eager[st.patch_size] for st in sched.stages)
    result["predicted_time_ratio_eager"] = cost / (sched.num_epochs * full)
    result["voxel_fraction"] = sched.voxel_fraction
    save()
    print(
        f"predicted PGPS/constant step-time ratio (eager): {result['predicted_time_ratio_eager']:.3f}; "
        f"voxel fraction {sched.voxel_fraction:.3f}",
        flush=True,
    )
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patch-size", type=int, nargs=3, default=[128, 128, 128])
    p.add_argument("--poolings", type=int, nargs=3, default=[5, 5, 5])
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (nnU-Net's CUDA default)")
    p.add_argument("--compile-shapes", action="store_true", help="compile only first, middle, last stage")
    p.add_argument(
        "--dynamic",
        choices=["auto", "false", "true"],
        default="auto",
        help="torch.compile dynamic= (auto: torch's default, as nnU-Net calls it)",
    )
    p.add_argument("--skip-eager", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    args.dynamic = {"auto": None, "false": False, "true": True}[args.dynamic]
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
