"""`make bench`: the constant-patch baseline, PGPS, PGPS+ and RPSS on the reduced task with the
same epochs and iterations, interleaved (A B C D, A B C D, ...) so that a change in machine load
hits every trainer alike, each training in its own process. Writes
``benchmarks/results/<machine>-<date>.json`` (raw per-repetition numbers, medians and spreads,
the targets of issue 6) and a PNG next to it, and prints a table.

    .venv/bin/python benchmarks/run_benchmark.py [--reps 3] [--epochs 9] [--iters 12]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `benchmarks.*` importable
    sys.path.insert(0, str(REPO))

from benchmarks.plot import plot, short  # noqa: E402
from benchmarks.prepare import TASK_IDS, nnunet_dirs, prepare  # noqa: E402
from benchmarks.stats import (  # noqa: E402
    PHASES,
    aggregate,
    check_targets,
    projected_seconds,
    projected_validation_seconds,
    summarize_run,
)
from pgps.errors import PGPSError  # noqa: E402
from pgps.report.environment import cpu_model  # noqa: E402

BASELINE = "nnUNetTrainerConstant"
PGPS = "nnUNetTrainerPGPS"
DEFAULT_TRAINERS = [BASELINE, PGPS, "nnUNetTrainerPGPSPlus", "nnUNetTrainerRPSS"]
NNUNET_SETTINGS = ("nnUNet_compile", "nnUNet_n_proc_DA", "nnUNet_def_n_proc")


def machine_info(device: str) -> dict:
    """What the numbers were measured on (the card's name where a GPU ran them)."""
    from importlib.metadata import version

    import torch

    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "device": gpu or "CPU only (no GPU)",
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "nnunetv2": version("nnunetv2"),
        "torch_compile": nnunet_cpu_defaults(device).get("nnUNet_compile", "t (nnU-Net default)"),
        "load_average_at_start": os.getloadavg(),
    }


def machine_slug(info: dict) -> str:
    base = info["gpu"] or info["cpu"]
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
    return f"{slug}-{info['cores']}c"


def train_env(work: Path, run_root: Path, args: argparse.Namespace) -> dict[str, str]:
    """What `eval "$(pgps env)"` gives nnU-Net's CLI, plus the shared budget of every trainer."""
    from pgps.paths import nnunet_env

    env = dict(os.environ)
    dirs = nnunet_dirs(work)
    dirs["nnUNet_results"] = str(run_root)
    env.update(nnunet_env())
    env.update(dirs)
    env.update(
        {
            "PGPS_NUM_EPOCHS": str(args.epochs),
            "PGPS_ITERS_PER_EPOCH": str(args.iters),
            "PGPS_VAL_ITERS": str(args.val_iters),
            "PGPS_SEED": str(args.seed),
            "PGPS_SAVE_EVERY": str(args.save_every),
            "PGPS_CODECARBON": "off",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(nnunet_cpu_defaults(args.device))
    return env


def nnunet_cpu_defaults(device: str) -> dict[str, str]:
    """nnU-Net settings the workers run with: on CPU compile off, synchronous loading, 2 processes,
    unless the caller's environment says otherwise (what the results file reports, too)."""
    if device != "cpu":
        return {k: os.environ[k] for k in NNUNET_SETTINGS if k in os.environ}
    defaults = {"nnUNet_compile": "f", "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "2"}
    return {k: os.environ.get(k, v) for k, v in defaults.items()}


def run_one(trainer: str, rep: int, dataset: str, work: Path, runs: Path, args: argparse.Namespace) -> dict:
    """One training in a fresh process; returns the worker's raw JSON plus the process wall time."""
    run_dir = runs / f"rep{rep}" / trainer
    run_dir.mkdir(parents=True, exist_ok=True)
    out, log = run_dir / "raw.json", run_dir / "train.log"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.worker",
        "--trainer",
        trainer,
        "--dataset",
        dataset,
        "--device",
        args.device,
        "--out",
        str(out),
    ]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(
            cmd,
            cwd=REPO,
            env=train_env(work, run_dir / "nnUNet_results", args),
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=False,
        )
    process_s = time.perf_counter() - t0
    if proc.returncode != 0 or not out.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
        raise PGPSError(f"{log}: {trainer} (repetition {rep}) failed with exit code {proc.returncode}: {tail[0]}")
    raw = json.loads(out.read_text())
    raw["process_s"] = process_s
    raw["rep"] = rep
    raw["dataset"] = dataset
    raw["loadavg_before"] = load_before  # other work on the machine shows here (1-min load > cores: suspect)
    atomic_write(out, json.dumps(raw) + "\n")  # complete on disk: --reanalyse rebuilds results from it
    if not args.keep_checkpoints:  # 20-50 MB each; the numbers are in raw.json
        for pth in (run_dir / "nnUNet_results").rglob("*.pth"):
            pth.unlink()
    return raw


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(result: dict) -> str:
    """Markdown table: one row per trainer (medians over repetitions, [min-max] for ratios)."""
    lines = [
        "| trainer | voxel fraction | wall-time ratio | train-loop ratio | CPU-time ratio | training s | "
        "switches (n, s, % of wall) | of which loader rebuild s | loader wait / iter | peak RSS MiB | Dice (fg mean) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in result["trainers"].items():
        r = e["ratio"]
        lines.append(
            f"| {short(name)} | {fmt(e['voxel_fraction'])} "
            f"| {fmt(r['wall']['median'])} [{fmt(r['wall']['min'])}-{fmt(r['wall']['max'])}] "
            f"| {fmt(r['loop']['median'])} | {fmt(r['cpu']['median'])} | {fmt(e['training_s']['median'], 1)} "
            f"| {e['switch_count']}, {fmt(e['switch_total_s']['median'], 2)}, "
            f"{fmt(100 * e['switch_fraction']['median'] if e['switch_fraction']['median'] is not None else None, 2)}%"
            f" | {fmt(e['switch_rebuild_s']['median'], 3)}"
            f" | {fmt(e['wait_per_iter_s']['median'], 4)} s | {fmt(e['peak_rss_training_mib']['median'], 0)} "
            f"| {fmt(e['dice']['median'])} [{fmt(e['dice']['min'])}-{fmt(e['dice']['max'])}] |"
        )
    return "\n".join(lines)


def phase_table(result: dict) -> str:
    """Markdown table: where each trainer's training time went (medians over repetitions, seconds)."""
    lines = [
        "| trainer | training s | network steps | loader wait | validation | epoch end (ckpt, plot, record) "
        "| epoch start (stage switch) | other | step-time ratio | projected ratio, nnU-Net protocol |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in result["trainers"].items():
        cells = " | ".join(fmt(e[f]["median"], 1) for f in PHASES)
        r = e["ratio"]
        lines.append(
            f"| {short(name)} | {fmt(e['training_s']['median'], 1)} | {cells} | {fmt(r['step']['median'])} "
            f"| {fmt(r['projected']['median'])} |"
        )
    return "\n".join(lines)


def build_result(
    raws: list[dict],
    baseline: str,
    started: dt.datetime,
    info: dict,
    args: argparse.Namespace,
    dataset: str,
    wall_s: float | None,
) -> dict:
    """The results file: config, machine, targets, per-trainer aggregates and every run's numbers."""
    summaries = [
        {
            **summarize_run(r),
            "rep": r["rep"],
            "projected_s": projected_seconds(r, args.val_iters),
            "projected_validation_s": projected_validation_seconds(r, args.val_iters),
        }
        for r in raws
    ]
    agg = aggregate(summaries, baseline)
    return {
        "created": started.isoformat(timespec="seconds"),
        "machine": info,
        "config": {
            "dataset": dataset,
            "variant": args.variant,
            "seed": args.seed,
            "baseline": baseline,
            "trainers": args.trainers,
            "repetitions": max(r["rep"] for r in raws) + 1,
            "repetitions_requested": args.reps,
            "order": "interleaved: " + " ".join(short(t) for t in args.trainers) + " per repetition",
            "epochs": args.epochs,
            "iters_per_epoch": args.iters,
            "val_iters": args.val_iters,
            "save_every": args.save_every,
            "device": args.device,
            "env": nnunet_cpu_defaults(args.device),
            "command": "make bench  # = .venv/bin/python benchmarks/run_benchmark.py " + " ".join(sys.argv[1:]),
        },
        "targets": check_targets(agg, baseline, PGPS),
        "trainers": agg,
        "runs": summaries,
        "bench_wall_s": wall_s,
    }


def report_text(result: dict) -> str:
    return f"{table(result)}\n\n{phase_table(result)}\n\n{targets_text(result)}\n"


def targets_text(result: dict) -> str:
    verdict = {None: "not judged", True: "met", False: "MISSED"}
    return "\n".join(
        f"- target {name}: {fmt(t['value'], 4)} vs limit {fmt(t['limit'], 4)} -> {verdict[t['met']]}"
        for name, t in result["targets"].items()
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (>= 3 for a spread)")
    p.add_argument("--epochs", type=int, default=9, help="epochs per run (9 = one per PGPS stage on Task901)")
    p.add_argument("--iters", type=int, default=10, help="training iterations per epoch")
    p.add_argument("--val-iters", type=int, default=2, help="validation iterations per epoch (nnU-Net: 1/5)")
    p.add_argument(
        "--save-every",
        type=int,
        default=1000,
        help="checkpoint_latest every N epochs (nnU-Net: 50); a fixed cost per epoch, not per voxel",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", choices=sorted(TASK_IDS), default="iso")
    p.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS, help=f"first = baseline ({BASELINE})")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "tmp")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument(
        "--reanalyse",
        type=Path,
        metavar="RUNS_DIR",
        help="rebuild the results from the raw.json files of an earlier (or interrupted) bench, "
        "benchmarks/results/tmp/runs/<stamp>, without training; pass the flags that run used",
    )
    args = p.parse_args(argv)
    for name in ("reps", "epochs", "iters", "save_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.val_iters < 0:
        p.error("--val-iters must be >= 0")
    return args


def load_raws(runs: Path, trainers: list[str]) -> list[dict]:
    """Every ``rep<N>/<trainer>/raw.json`` under ``runs`` for the given trainers, in bench order;
    only repetitions complete for every trainer (an interrupted bench's last one is partial)."""
    found: dict[int, dict[str, dict]] = {}
    for path in sorted(runs.glob("rep*/*/raw.json")):
        rep, trainer = int(path.parent.parent.name[3:]), path.parent.name
        if trainer in trainers:
            try:
                raw = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise PGPSError(f"{path}: not valid JSON ({exc})") from None
            found.setdefault(rep, {})[trainer] = {**raw, "rep": rep}
    raws = [by[t] for rep, by in sorted(found.items()) if set(trainers) <= set(by) for t in trainers]
    if not raws:
        raise PGPSError(f"{runs}: no repetition with a raw.json for every one of {', '.join(trainers)}")
    return raws


def reanalyse(args: argparse.Namespace) -> int:
    raws = load_raws(args.reanalyse, args.trainers)
    info = machine_info(args.device)
    stamp = dt.datetime.strptime(args.reanalyse.name, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    dataset = raws[0].get("dataset") or f"Dataset{TASK_IDS[args.variant]} ({args.variant})"
    result = build_result(raws, args.trainers[0], stamp, info, args, dataset, None)
    result["config"]["reanalysed_from"] = str(args.reanalyse)
    stem = f"{machine_slug(info)}-{stamp.strftime('%Y-%m-%d')}"
    json_path, png = args.out / f"{stem}.json", args.out / f"{stem}.png"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(json_path, json.dumps(result, indent=1) + "\n")
    plot(result, png)
    atomic_write(json_path.with_suffix(".md"), report_text(result))
    print(report_text(result))
    print(f"bench: re-analysed {len(raws)} runs from {args.reanalyse} into {json_path} and {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reanalyse is not None:
        return reanalyse(args)
    t_start = time.perf_counter()
    started = dt.datetime.now(dt.UTC)
    info = machine_info(args.device)
    print(f"bench: {info['cpu']} x{info['cores']}, {info['device']}; load {info['load_average_at_start']}")
    prep = prepare(args.work, args.variant, args.seed, Path(sys.executable).parent)
    dataset = prep["dataset"]
    how = "already prepared" if prep.get("cached") else f"prepared in {prep['prepare_s']:.1f} s"
    print(f"bench: {dataset} {how}")
    runs = args.work / "runs" / started.strftime("%Y%m%dT%H%M%SZ")
    raws: list[dict] = []
    baseline = args.trainers[0]
    stem = f"{machine_slug(info)}-{started.strftime('%Y-%m-%d')}"
    json_path, png = args.out / f"{stem}.json", args.out / f"{stem}.png"
    result: dict = {}
    for rep in range(args.reps):
        for trainer in args.trainers:
            raw = run_one(trainer, rep, dataset, args.work, runs, args)
            raws.append(raw)
            print(
                f"bench: rep {rep} {short(trainer):9s} training {raw['training_s']:7.1f} s, process "
                f"{raw['process_s']:6.1f} s, Dice {raw['dice_foreground_mean']:.3f}",
                flush=True,
            )
        # written after every repetition: an interrupted bench keeps its complete repetitions
        result = build_result(raws, baseline, started, info, args, dataset, time.perf_counter() - t_start)
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write(json_path, json.dumps(result, indent=1) + "\n")
        plot(result, png)
        atomic_write(json_path.with_suffix(".md"), report_text(result))
    shutil.copyfile(json_path, runs / "result.json")
    print()
    print(report_text(result))
    print(f"bench: wrote {json_path} and {png} in {result['bench_wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PGPSError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
