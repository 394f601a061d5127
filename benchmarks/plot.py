"""The benchmark's figure: wall-time ratios against the compute limit (voxel fraction), seconds
per iteration per PGPS stage, and where each trainer's wall time goes."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.stats import WALL_RATIO_SLACK  # noqa: E402

SHORT = {
    "nnUNetTrainerConstant": "constant",
    "nnUNetTrainerPGPS": "PGPS",
    "nnUNetTrainerPGPSPlus": "PGPS+",
    "nnUNetTrainerRPSS": "RPSS",
}


def short(name: str) -> str:
    return SHORT.get(name, name.removeprefix("nnUNetTrainer"))


def plot(result: dict, out: Path) -> Path:
    """Write the PNG atomically (temp name in the same folder, then rename)."""
    agg, baseline = result["trainers"], result["config"]["baseline"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    title = f"{result['machine']['cpu']} ({result['machine']['cores']} cores), {result['machine']['device']}"
    fig.suptitle(f"PGPS benchmark on {result['config']['dataset']}: {title}", fontsize=10)

    ax = axes[0]
    ax.plot([0, 1.05], [0, 1.05], "k--", lw=1, label="ratio = voxel fraction (compute limit)")
    ax.plot([0, 1.05], [WALL_RATIO_SLACK, 1.05 + WALL_RATIO_SLACK], "k:", lw=1, label="target: + 0.05")
    for i, (name, e) in enumerate(agg.items()):
        vf = e["voxel_fraction"] if e["voxel_fraction"] is not None else 1.0
        for key, marker, fill in (("wall", "o", True), ("loop", "s", False)):
            r = e["ratio"][key]
            if r["median"] is None:
                continue
            color = f"C{i}"
            ax.errorbar(
                vf,
                r["median"],
                yerr=[[r["median"] - r["min"]], [r["max"] - r["median"]]],
                fmt=marker,
                color=color,
                mfc=color if fill else "none",
                capsize=3,
                label=f"{short(name)} {'wall time' if key == 'wall' else 'train loop only'}",
            )
    ax.set_xlabel("voxel fraction of the schedule (compute vs constant patch)")
    ax.set_ylabel(f"time ratio to {short(baseline)} (median, min-max)")
    ax.set_xlim(0, 1.1)
    ax.set_ylim(0, 1.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)

    ax = axes[1]
    base_rows = agg.get(baseline, {}).get("stages", [])
    base_s = base_rows[0]["s_per_iter"] if base_rows else None
    for i, (name, e) in enumerate(agg.items()):
        if name == baseline or not e["stages"] or len(e["stages"]) < 2:
            continue
        rows = sorted(e["stages"], key=lambda r: r["voxel_fraction"])
        ax.plot(
            [r["voxel_fraction"] for r in rows],
            [r["s_per_iter"] for r in rows],
            "o-",
            color=f"C{i}",
            label=f"{short(name)} stages",
        )
    if base_s:
        ax.axhline(base_s, color="C0", ls="--", label=f"{short(baseline)} (planned patch)")
        grid = [0.01 * 1.1**k for k in range(49)]
        ax.plot(grid, [base_s * g for g in grid], color="gray", ls=":", label="proportional to voxels")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("voxels per batch relative to the planned patch x batch (log)")
    ax.set_ylabel("seconds per iteration (median; loader wait + step; log)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)

    ax = axes[2]
    names = list(agg)
    # a switch's rebuild runs outside the loop, its first-batch/step extras inside: move both to their own bar
    switch = [max(agg[n]["switch_total_s"]["median"] or 0.0, 0.0) for n in names]
    rebuild = [min(agg[n]["switch_rebuild_s"]["median"] or 0.0, s) for n, s in zip(names, switch)]
    loop = [(agg[n]["train_loop_s"]["median"] or 0.0) - (s - rb) for n, s, rb in zip(names, switch, rebuild)]
    outside = [(agg[n]["outside_loop_s"]["median"] or 0.0) - rb for n, rb in zip(names, rebuild)]
    xs = range(len(names))
    ax.bar(xs, loop, label="training iterations (loader wait + step)")
    ax.bar(xs, outside, bottom=loop, label="per-epoch validation, checkpoints, hooks")
    ax.bar(
        xs,
        switch,
        bottom=[a + b for a, b in zip(loop, outside)],
        color="red",
        label="stage switches (rebuild + first-batch/step extra)",
    )
    ax.set_xticks(list(xs), [short(n) for n in names], rotation=25, ha="right")
    ax.set_ylim(0, 1.35 * max((a + b + c for a, b, c in zip(loop, outside, switch)), default=1.0))
    ax.set_ylabel("seconds of training wall time (median)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out
