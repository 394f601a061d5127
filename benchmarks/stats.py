"""Pure aggregation of the worker's raw measurements (no torch, no nnU-Net): per-stage seconds
per iteration, loader waits, stage-switch costs, per-repetition ratios to the baseline, and the
targets of issue 6. Kept pure so the arithmetic is unit-tested on hand-made numbers."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

# targets (issue 6)
WALL_RATIO_SLACK = 0.05  # PGPS wall-time ratio <= voxel fraction + this
SWITCH_BUDGET = 0.01  # all stage switches together < this fraction of the run's wall time
DICE_TOLERANCE = 0.01  # PGPS Dice >= baseline Dice - this


def spread(values: Iterable[float | None]) -> dict:
    """Median and range of the non-missing values (the repetitions of one measurement)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _key(shape: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """(batch, spatial patch) of a ``data`` tensor shape (batch, channels, *patch)."""
    return int(shape[0]), tuple(int(s) for s in shape[2:])


def _wait(it: dict) -> float | None:
    return None if it.get("next_t0") is None else it["next_t1"] - it["next_t0"]


def per_stage(iterations: list[dict], planned_patch: Sequence[int], planned_batch: int) -> list[dict]:
    """One row per distinct (batch, patch), in order of first appearance: medians over its iterations."""
    full = math.prod(planned_patch) * planned_batch
    groups: dict[tuple[int, tuple[int, ...]], list[dict]] = {}
    for it in iterations:
        groups.setdefault(_key(it["shape"]), []).append(it)
    rows = []
    for (batch, patch), its in groups.items():
        steps = [it["step_t1"] - it["step_t0"] for it in its]
        waits = [w for w in (_wait(it) for it in its) if w is not None]
        rows.append(
            {
                "patch_size": list(patch),
                "batch_size": batch,
                "voxel_fraction": batch * math.prod(patch) / full,
                "iterations": len(its),
                "step_s": statistics.median(steps),
                "wait_s": statistics.median(waits) if waits else None,
                "s_per_iter": statistics.median(s + (_wait(it) or 0.0) for s, it in zip(steps, its)),
                "step_cpu_s": statistics.median(it["step_cpu"] for it in its) if "step_cpu" in its[0] else None,
                "first_step_s": steps[0],
            }
        )
    return rows


def _steady(values: list[float]) -> float | None:
    """Median without the first value (the first iteration of a shape pays its warm-up)."""
    rest = values[1:] if len(values) > 1 else values
    return statistics.median(rest) if rest else None


def stage_switches(raw: dict) -> list[dict]:
    """Every training-loader rebuild after epoch 0, i.e. every stage switch, and what it cost.

    cost = the rebuild (duration of ``on_train_epoch_start``, which shuts the old loader and builds
    the new one) + the first batch's extra loader wait + the first step's extra time at the new
    shape (warm-up; a recompile under torch.compile), extras taken against the stage's steady median.
    ``gap_s`` is the literal time from the last step of stage k to the first step of stage k+1; it
    also holds the epoch's validation and checkpointing, which every trainer pays every epoch."""
    iterations = raw["iterations"]
    by_epoch: dict[int, list[dict]] = {}
    for it in iterations:
        by_epoch.setdefault(it["epoch"], []).append(it)
    by_shape: dict[tuple, list[dict]] = {}
    for it in iterations:
        by_shape.setdefault(_key(it["shape"]), []).append(it)
    starts = {h["epoch"]: h for h in raw["hooks"] if h["hook"] == "on_train_epoch_start"}
    switch_epochs = sorted({ld["epoch"] for ld in raw["loaders"] if ld["epoch"] > 0})
    out = []
    for e in switch_epochs:
        if e not in by_epoch or e - 1 not in by_epoch:
            continue
        first, last = by_epoch[e][0], by_epoch[e - 1][-1]
        same = by_shape[_key(first["shape"])]
        steady_step = _steady([it["step_t1"] - it["step_t0"] for it in same])
        waits = [w for w in (_wait(it) for it in same) if w is not None]
        steady_wait = _steady(waits) if waits else None
        hook = starts.get(e)
        rebuild = hook["t1"] - hook["t0"] if hook else 0.0
        first_step_extra = (first["step_t1"] - first["step_t0"]) - steady_step
        first_wait = _wait(first)
        first_wait_extra = first_wait - steady_wait if first_wait is not None and steady_wait is not None else 0.0
        out.append(
            {
                "epoch": e,
                "from": {"patch_size": list(_key(last["shape"])[1]), "batch_size": _key(last["shape"])[0]},
                "to": {"patch_size": list(_key(first["shape"])[1]), "batch_size": _key(first["shape"])[0]},
                "rebuild_s": rebuild,
                "first_wait_extra_s": first_wait_extra,
                "first_step_extra_s": first_step_extra,
                "cost_s": rebuild + first_wait_extra + first_step_extra,
                "gap_s": first["step_t0"] - last["step_t1"],
            }
        )
    return out


def _hook_seconds(raw: dict, name: str) -> float:
    return sum(h["t1"] - h["t0"] for h in raw["hooks"] if h["hook"] == name)


def time_by_phase(raw: dict) -> dict:
    """Where a run's training time went: network steps, waiting for batches, the per-epoch
    validation (start hook to end hook, batches included), the epoch-end bookkeeping (checkpoints,
    progress plot, run record) and the epoch-start hook (a PGPS stage switch rebuilds the loader
    there). ``other_s`` is the rest of ``training_s`` (logging, the epoch loop itself)."""
    its = raw["iterations"]
    step = sum(it["step_t1"] - it["step_t0"] for it in its)
    wait = sum(w for w in (_wait(it) for it in its) if w is not None)
    val_start = {h["epoch"]: h["t0"] for h in raw["hooks"] if h["hook"] == "on_validation_epoch_start"}
    val_end = {h["epoch"]: h["t1"] for h in raw["hooks"] if h["hook"] == "on_validation_epoch_end"}
    validation = sum(val_end[e] - t0 for e, t0 in val_start.items() if e in val_end)
    epoch_end = _hook_seconds(raw, "on_epoch_end")
    epoch_start = _hook_seconds(raw, "on_train_epoch_start")
    return {
        "step_s": step,
        "wait_s": wait,
        "validation_s": validation,
        "epoch_end_s": epoch_end,
        "epoch_start_s": epoch_start,
        "other_s": raw["training_s"] - step - wait - validation - epoch_end - epoch_start,
    }


# nnU-Net's protocol, for the projection below
PROTOCOL_EPOCHS, PROTOCOL_ITERS, PROTOCOL_VAL_ITERS = 1000, 250, 50


def _protocol_epoch_costs(raw: dict, val_iters: int) -> tuple[float, float] | None:
    """Per epoch of this run, put onto nnU-Net's protocol: (validation at 50 full-patch
    iterations, the per-epoch bookkeeping outside steps, waits and validation)."""
    n_epochs = len({it["epoch"] for it in raw["iterations"]})
    if val_iters <= 0 or n_epochs == 0:
        return None
    phases = time_by_phase(raw)
    val = phases["validation_s"] / n_epochs * PROTOCOL_VAL_ITERS / val_iters
    fixed = (phases["epoch_end_s"] + phases["epoch_start_s"] + phases["other_s"]) / n_epochs
    return val, fixed


def projected_validation_seconds(raw: dict, val_iters: int, epochs: int = PROTOCOL_EPOCHS) -> float | None:
    """The validation part of ``projected_seconds``: 50 full-patch iterations every epoch, the same
    for every trainer, so it does not shrink with the curriculum's voxel fraction."""
    per_epoch = _protocol_epoch_costs(raw, val_iters)
    return None if per_epoch is None else epochs * per_epoch[0]


def projected_seconds(raw: dict, val_iters: int, epochs: int = PROTOCOL_EPOCHS) -> float | None:
    """This run's steady costs put onto nnU-Net's protocol (1000 epochs x 250 iterations, 50
    validation iterations): sum over the mode's stages at ``epochs`` of epochs_k x (250 x seconds
    per iteration at stage k + validation + per-epoch bookkeeping), each measured in this run.
    What the tiny benchmark over-weights (a stage's first steps, fixed per-epoch costs against 10
    iterations) drops to its real share. None where a stage of the long schedule was not measured
    (a stage the short run thinned away) or the mode draws a patch per iteration (rpss)."""
    from pgps.schedule import build_schedule

    schedule, per_epoch = raw.get("schedule"), _protocol_epoch_costs(raw, val_iters)
    if not schedule or schedule.get("candidates") or per_epoch is None:
        return None
    val, fixed = per_epoch
    stages = per_stage(raw["iterations"], raw["planned_patch"], raw["planned_batch"])
    cost = {(st["batch_size"], tuple(st["patch_size"])): st["s_per_iter"] for st in stages}
    long = build_schedule(
        schedule["planned_patch_size"],
        schedule["poolings"],
        epochs,
        schedule["planned_batch_size"],
        mode=schedule["mode"],
        seed=schedule.get("seed", 0),
        start_bottleneck=raw.get("start_bottleneck"),
    )
    total = 0.0
    for st in long.stages:
        c = cost.get((st.batch_size, tuple(st.patch_size)))
        if c is None:
            return None
        total += st.num_epochs * (PROTOCOL_ITERS * c + val + fixed)
    return total


def summarize_run(raw: dict) -> dict:
    """The numbers of one training run (one trainer, one repetition)."""
    its = raw["iterations"]
    planned = raw["planned_patch"]
    planned_batch = raw.get("planned_batch") or max(_key(it["shape"])[0] for it in its)
    loop = sum(it["step_t1"] - (it["next_t0"] if it["next_t0"] is not None else it["step_t0"]) for it in its)
    waits = [w for w in (_wait(it) for it in its) if w is not None]
    switches = stage_switches(raw)
    switch_total = sum(s["cost_s"] for s in switches)
    full = math.prod(planned) * planned_batch
    realized = sum(_key(it["shape"])[0] * math.prod(_key(it["shape"])[1]) for it in its) / (len(its) * full)
    schedule = raw.get("schedule") or {}
    phases = time_by_phase(raw)
    return {
        "trainer": raw["trainer"],
        "training_s": raw["training_s"],
        "training_cpu_s": raw.get("training_cpu_s"),
        "process_s": raw.get("process_s"),
        "imports_s": raw.get("imports_s"),
        "setup_s": raw.get("setup_s"),
        "final_validation_s": raw.get("final_validation_s"),
        "train_loop_s": loop,
        "outside_loop_s": raw["training_s"] - loop,
        **phases,
        "iterations": len(its),
        "wait_per_iter_s": statistics.median(waits) if waits else None,
        "wait_mean_per_iter_s": statistics.fmean(waits) if waits else None,
        "wait_fraction_of_loop": sum(waits) / loop if waits and loop > 0 else None,
        "switches": switches,
        "switch_total_s": switch_total,
        "switch_rebuild_s": sum(s["rebuild_s"] for s in switches),
        "switch_fraction": switch_total / raw["training_s"] if raw["training_s"] > 0 else None,
        "voxel_fraction_schedule": schedule.get("voxel_fraction"),
        "voxel_fraction_realized": realized,
        "stages": per_stage(its, planned, planned_batch),
        "peak_rss_training_mib": raw.get("peak_rss_training_mib"),
        "peak_rss_mib": raw.get("peak_rss_mib"),
        "cuda_max_allocated_mib": raw.get("cuda_max_allocated_mib"),
        "dice": raw.get("dice_foreground_mean"),
        "dice_per_class": raw.get("dice_per_class"),
        "loadavg_before": raw.get("loadavg_before"),
    }


PHASES = ("step_s", "wait_s", "validation_s", "epoch_end_s", "epoch_start_s", "other_s")
RATIO_FIELDS = {
    "wall": "training_s",
    "step": "step_s",
    "projected": "projected_s",
    "loop": "train_loop_s",
    "cpu": "training_cpu_s",
    "process": "process_s",
}


def aggregate(runs: list[dict], baseline: str) -> dict:
    """Per trainer: spreads over repetitions, and ratios to the baseline run of the SAME repetition
    (paired, since the runs of one repetition ran back to back)."""
    base_by_rep = {r["rep"]: r for r in runs if r["trainer"] == baseline}
    trainers = list(dict.fromkeys(r["trainer"] for r in runs))
    out: dict[str, dict] = {}
    for name in trainers:
        mine = [r for r in runs if r["trainer"] == name]
        entry: dict = {
            "repetitions": len(mine),
            "voxel_fraction": next((r["voxel_fraction_schedule"] for r in mine if r["voxel_fraction_schedule"]), None),
            "voxel_fraction_realized": spread(r["voxel_fraction_realized"] for r in mine),
            "dice": spread(r["dice"] for r in mine),
            "switch_total_s": spread(r["switch_total_s"] for r in mine),
            "switch_rebuild_s": spread(r["switch_rebuild_s"] for r in mine),
            "switch_fraction": spread(r["switch_fraction"] for r in mine),
            "projected_validation_share": spread(
                r["projected_validation_s"] / r["projected_s"]
                for r in mine
                if r.get("projected_s") and r.get("projected_validation_s") is not None
            ),
            # the same switches against the run projected onto nnU-Net's protocol (switches do not scale with it)
            "switch_fraction_projected": spread(
                r["switch_total_s"] / r["projected_s"] for r in mine if r.get("projected_s")
            ),
            "switch_count": max((len(r["switches"]) for r in mine), default=0),
            "wait_per_iter_s": spread(r["wait_per_iter_s"] for r in mine),
            "peak_rss_training_mib": spread(r["peak_rss_training_mib"] for r in mine),
            "cuda_max_allocated_mib": spread(r["cuda_max_allocated_mib"] for r in mine),
        }
        totals = ("training_s", "train_loop_s", "outside_loop_s", "training_cpu_s", "process_s", "projected_s")
        for field in (*totals, *PHASES):
            entry[field] = spread(r.get(field) for r in mine)
        entry["ratio"] = {}
        for label, field in RATIO_FIELDS.items():
            vals = []
            for r in mine:
                b = base_by_rep.get(r["rep"])
                if b and r.get(field) is not None and b.get(field):
                    vals.append(r[field] / b[field])
            entry["ratio"][label] = spread(vals)
        entry["dice_minus_baseline"] = spread(
            r["dice"] - base_by_rep[r["rep"]]["dice"] for r in mine if r["rep"] in base_by_rep
        )
        entry["stages"] = _stage_medians(mine)
        out[name] = entry
    return out


def _stage_medians(runs: list[dict]) -> list[dict]:
    """Per (batch, patch): medians over repetitions of the per-run stage medians."""
    rows: dict[tuple, list[dict]] = {}
    for r in runs:
        for st in r["stages"]:
            rows.setdefault((st["batch_size"], tuple(st["patch_size"])), []).append(st)
    return [
        {
            "patch_size": list(patch),
            "batch_size": batch,
            "voxel_fraction": sts[0]["voxel_fraction"],
            "s_per_iter": spread(s["s_per_iter"] for s in sts)["median"],
            "step_s": spread(s["step_s"] for s in sts)["median"],
            "step_cpu_s": spread(s["step_cpu_s"] for s in sts)["median"],
            "wait_s": spread(s["wait_s"] for s in sts)["median"],
        }
        for (batch, patch), sts in rows.items()
    ]


def check_targets(agg: dict, baseline: str, pgps: str) -> dict:
    """Issue 6's three targets for the PGPS trainer, each with the numbers it was judged on."""
    if pgps not in agg or baseline not in agg:
        return {}
    p, b = agg[pgps], agg[baseline]
    vf = p["voxel_fraction"]
    ratio = p["ratio"]["wall"]["median"]
    sw = p["switch_fraction"]["median"]
    val_share = b["projected_validation_share"]["median"]
    # the voxel fraction bounds training compute only; nnU-Net's per-epoch validation runs at the full patch
    adjusted = None if vf is None or val_share is None else vf * (1 - val_share) + val_share
    swp = p["switch_fraction_projected"]["median"]
    proj = p["ratio"]["projected"]["median"]
    dp, db = p["dice"]["median"], b["dice"]["median"]
    return {
        "wall_ratio": {
            "value": ratio,
            "limit": None if vf is None else vf + WALL_RATIO_SLACK,
            "met": None if ratio is None or vf is None else ratio <= vf + WALL_RATIO_SLACK,
        },
        "switch_fraction": {"value": sw, "limit": SWITCH_BUDGET, "met": None if sw is None else sw < SWITCH_BUDGET},
        "switch_fraction_projected": {
            "value": swp,
            "limit": SWITCH_BUDGET,
            "met": None if swp is None else swp < SWITCH_BUDGET,
        },
        "wall_ratio_projected": {
            "value": proj,
            "limit": None if vf is None else vf + WALL_RATIO_SLACK,
            "met": None if proj is None or vf is None else proj <= vf + WALL_RATIO_SLACK,
        },
        "wall_ratio_projected_vs_validation_adjusted_limit": {
            "value": proj,
            "limit": None if adjusted is None else adjusted + WALL_RATIO_SLACK,
            "met": None if proj is None or adjusted is None else proj <= adjusted + WALL_RATIO_SLACK,
        },
        "dice": {
            "value": dp,
            "limit": None if db is None else db - DICE_TOLERANCE,
            "met": None if dp is None or db is None else dp >= db - DICE_TOLERANCE,
        },
    }
