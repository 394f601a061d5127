"""The whole PGPS trainer on one GPU, in ONE device call (issue 17.1).

Phases, in this order while the deadline allows (a phase is skipped, and says so, when less time
is left than it needs; ``--phases`` picks; results go to ``<out>/device_check.json`` after each):

``setup``      versions, GPU, the carried dataset unpacked, SimpleITK stubbed (carry.py).
``steps``      eager vs CUDA-graph seconds per training step at every PGPS stage shape, on the
               trainer's own network, loss, optimizer and grad scaler (synthetic batches, compile
               off), with peak memory, and the curriculum's predicted network-time ratio for both.
``pgps``       ``nnUNetv2_train`` PGPS with nnU-Net's GPU defaults (data-augmentation workers, pin
               memory, the CUDA dry run), one epoch per stage; killed (SIGKILL, whole process
               group) once it prints ``Epoch <kill_epoch>``, resumed with ``--c``; nnU-Net's final
               validation.
``constant``   the baseline with the same budget (for the projected ratio). This and the phases below time
               training only: no final validation (the probe trainers skip it).
``predict``    ``nnUNetv2_predict`` with the PGPS model on the carried test case; Dice.
``compile``    PGPS with torch.compile as the trainers configure it (static shapes per stage), two
               epochs (first and full stage): compile seconds per stage inside training.
``pgps_plus``  PGPS+ with the same budget.
``graphs``     PGPS with ``PGPS_CUDA_GRAPHS=on`` (a real effect only once base.py calls
               pgps.nnunet.cuda_graphs).

Per training run, from the instrumented trainers (probe/) and ``benchmarks.stats``: seconds per
iteration, loader wait and first-step (autotune/compile) extra per stage, GPU peak memory per
epoch, stage switches, where the time went, and the end-to-end wall ratio projected onto
nnU-Net's protocol (``benchmarks.stats.projected_seconds``, as the CPU bench).

On the device (see README, "GPU check")::

    python3 benchmarks/gpu/device_check.py --out $OUT --deadline-s 480

Here, as a dry run on the CPU (tiny budget, device cpu; what the test suite runs)::

    python benchmarks/gpu/device_check.py --dry --data <tar> --out <dir>
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

T_START = time.monotonic()
REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
for p in (REPO / "src", REPO):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from pgps import fileio  # noqa: E402

DATASET_ID, DATASET = 905, "Dataset905_PGPSGPU"
PROBE = {
    "constant": "ProbennUNetTrainerConstant",
    "pgps": "ProbennUNetTrainerPGPS",
    "pgps+": "ProbennUNetTrainerPGPSPlus",
}
# seconds a phase needs at least (measured budget guesses for an H200 + 16 cores; the dry run ignores them)
NEEDS = {"steps": 100, "pgps": 150, "predict": 40, "constant": 60, "pgps_plus": 120, "compile": 170, "graphs": 120}
PHASES = ("steps", "pgps", "constant", "predict", "compile", "pgps_plus", "graphs")


def elapsed() -> float:
    return time.monotonic() - T_START


class Deadline:
    def __init__(self, seconds: float, dry: bool) -> None:
        self.seconds, self.dry = seconds, dry

    def left(self) -> float:
        return self.seconds - elapsed()

    def allows(self, phase: str) -> bool:
        return self.dry or self.left() >= NEEDS.get(phase, 0)


# ---------------------------------------------------------------- environment
TRACE_DIR: Path | None = None  # --trace-imports: every process appends its imports here


def base_env(work: Path, dry: bool, results: str = "nnUNet_results") -> dict[str, str]:
    """nnU-Net's folders, our trainers and the probes by name, SimpleITK stubbed; nnU-Net's own
    runtime defaults otherwise (no nnUNet_n_proc_DA, no nnUNet_compile: the CUDA defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGPS_", "nnUNet_"))}
    path = [str(HERE / "sitk_stub"), str(REPO / "src"), str(REPO)]
    if TRACE_DIR is not None:  # the dry run's trace, with what the device lacks blocked
        from benchmarks.gpu.carry import ABSENT_ON_DEVICE

        path.insert(0, str(HERE / "import_trace"))
        env["PGPS_IMPORT_TRACE"] = str(TRACE_DIR)
        env["PGPS_IMPORT_BLOCK"] = ",".join(ABSENT_ON_DEVICE)
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    env.update(
        PYTHONPATH=os.pathsep.join(path),
        PYTHONUNBUFFERED="1",
        nnUNet_raw=str(work / "nnUNet_raw"),
        nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
        nnUNet_results=str(work / results),
        nnUNet_extTrainer=str(HERE / "probe"),
    )
    if dry:  # the CPU: nnU-Net's CPU settings; one thread (OpenMP spin-waits badly on a shared 2-core box), one
        # worker per nnU-Net spawn pool (each imports torch: the validations' pools were most of the dry run's CPU)
        env.update(nnUNet_compile="f", nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1")
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def knobs(epochs: int, iters: int, val_iters: int, **extra: str) -> dict[str, str]:
    from pgps.nnunet.knobs import DEFAULTS

    values = dict(DEFAULTS)
    values.update(
        PGPS_NUM_EPOCHS=str(epochs), PGPS_ITERS_PER_EPOCH=str(iters), PGPS_VAL_ITERS=str(val_iters), PGPS_SEED="0"
    )
    values.update(extra)
    return values


def setup(args: argparse.Namespace) -> dict:
    import torch

    args.work.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.data) as tar:
        tar.extractall(args.work, filter="data")
    (args.work / "nnUNet_results").mkdir(exist_ok=True)
    probe = subprocess.run(
        [sys.executable, "-c", "import SimpleITK, nnunetv2, blosc2, nibabel; print(getattr(SimpleITK, 'STUB', False))"],
        env=base_env(args.work, args.dry),
        capture_output=True,
        text=True,
        check=False,
    )
    from importlib.metadata import version

    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cpu_count": os.cpu_count(),
        "nnunetv2": version("nnunetv2"),
        "simpleitk_stubbed": probe.stdout.strip() == "True",
        "imports_ok": probe.returncode == 0,
        "imports_error": probe.stderr[-500:] if probe.returncode else None,
    }


# ---------------------------------------------------------------- phase: step timings
def _timed(fn, device, n: int) -> list[float]:
    import torch

    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def steps_worker(args: argparse.Namespace) -> dict:
    """In its own process: eager nnU-Net train_step vs the graphed step, per stage shape."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from pgps.nnunet.cuda_graphs import GraphedTrainStep, unavailable_reason
    from pgps.nnunet.dryrun import synthetic_batch
    from pgps.trainers.nnUNetTrainerPGPS import nnUNetTrainerPGPS

    device = torch.device("cpu" if args.dry else "cuda")
    torch.backends.cudnn.benchmark = True  # as nnUNetv2_train sets it
    pre = Path(os.environ["nnUNet_preprocessed"]) / DATASET
    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = nnUNetTrainerPGPS(plans, "3d_fullres", 0, load_json(str(pre / "dataset.json")), device)
    trainer.initialize()
    trainer.network.train()
    sched = trainer.pgps_schedule
    reason = unavailable_reason(trainer)
    n = 2 if args.dry else 15
    cuda = device.type == "cuda"

    def batch_at(st):  # noqa: ANN001, ANN202
        b = synthetic_batch(trainer, st.patch_size, st.batch_size)
        if not cuda:
            return b
        t = b["target"]
        return {"data": b["data"].pin_memory(), "target": [x.pin_memory() for x in t] if isinstance(t, list) else t}

    def peak() -> float | None:
        return torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None

    rows = []
    for st in sched.stages:  # nnU-Net's own train_step (its SGD, its loss readback every step)
        batch = batch_at(st)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        eager = _timed(lambda b=batch: trainer.train_step(b), device, n + 1)
        rows.append(
            {
                "patch_size": list(st.patch_size),
                "batch_size": st.batch_size,
                "eager_first_s": eager[0],
                "eager_step_s": statistics.median(eager[1:]),
                "eager_peak_mem_gib": peak(),
            }
        )
        print("steps eager", json.dumps(rows[-1]), flush=True)
    if reason is None:
        graphed = GraphedTrainStep(trainer)  # from here on SGD is fused
        for st, row in zip(sched.stages, rows):
            batch = batch_at(st)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            first = _timed(lambda b=batch: graphed(b), device, graphed.warmup + 1)  # warm-up, capture, replay
            steps = _timed(lambda b=batch: graphed(b), device, n)
            t0 = time.perf_counter()
            for _ in range(n):
                graphed(batch)
            if cuda:
                torch.cuda.synchronize(device)
            row.update(
                graph_warmup_capture_s=sum(first),
                graph_step_s=statistics.median(steps),
                graph_step_unsynced_s=(time.perf_counter() - t0) / n,
                graph_peak_mem_gib=peak(),
                graph_stats=graphed.stats(),
            )
            graphed.clear()  # a PGPS stage never comes back: free its graph's memory pool
            print("steps graph", json.dumps(row), flush=True)
    full = rows[-1]
    out = {"graphs_unavailable": reason, "rows": rows, "voxel_fraction": sched.voxel_fraction}
    for kind in ("eager_step_s", "graph_step_s"):
        if all(kind in r for r in rows):
            cost = sum(st.num_epochs * r[kind] for st, r in zip(sched.stages, rows))
            out[f"network_time_ratio_{kind.split('_')[0]}"] = cost / (sched.num_epochs * full[kind])
    return out


def run_steps(args: argparse.Namespace, deadline: Deadline) -> dict:
    env = base_env(args.work, args.dry)
    env.update(knobs(1000, 1, 1), nnUNet_compile="f")
    target = args.work / "steps.json"
    cmd = [sys.executable, str(Path(__file__)), "--steps-worker", "--out", str(target), "--work", str(args.work)]
    cmd += ["--dry"] if args.dry else []
    proc = _run(cmd, env, args.work / "steps.log", deadline)
    if proc["rc"] != 0 or not target.is_file():
        return {"error": proc}
    return json.loads(target.read_text())


# ---------------------------------------------------------------- phases: nnU-Net's CLI
def _run(cmd: list[str], env: dict[str, str], log: Path, deadline: Deadline, kill_on: str | None = None) -> dict:
    """Run one command in its own process group, log to ``log``; kill the group when a stdout
    line matches ``kill_on`` (a real event: the trainer printing it) or at the deadline."""
    t0 = time.perf_counter()
    killed = None
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        pattern = re.compile(kill_on) if kill_on else None
        import threading

        def at_deadline() -> None:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(max(1.0, deadline.left()), at_deadline)
        timer.daemon = True
        timer.start()
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                fh.write(line)
                if pattern is not None and killed is None and pattern.search(line):
                    killed = {"line": line.strip(), "at_s": time.perf_counter() - t0}
                    os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        finally:
            timer.cancel()
    timed_out = killed is None and rc == -signal.SIGKILL
    return {
        "cmd": " ".join(cmd[1:4]),
        "rc": rc,
        "seconds": time.perf_counter() - t0,
        "killed": killed,
        "timed_out": timed_out,
    }


def train_cmd(trainer: str, resume: bool, dry: bool) -> list[str]:
    """``nnUNetv2_train``'s entry function through ``python -c``, as the pipeline starts it (pgps.pipeline.nnunet_cli
    .ENTRY_POINTS: spawned validation workers then skip re-importing the training script's modules). Spelled out
    here rather than imported, so that the device's import trace stays the trainers' own."""
    cmd = [sys.executable, "-c", "from nnunetv2.run.run_training import run_training_entry as m; m()"]
    cmd += [str(DATASET_ID), "3d_fullres", "0", "-tr", trainer]
    cmd += ["-device", "cpu"] if dry else []
    cmd += ["--c"] if resume else []
    return cmd


def fold_dir(work: Path, results: str, trainer: str) -> Path:
    return work / results / DATASET / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"


def merged_raw(fold: Path) -> dict | None:
    """The probe's raw files of every session of a run, as one raw for benchmarks.stats."""
    files = sorted((fold / "gpu_probe").glob("*.json"), key=lambda f: f.stat().st_mtime)
    if not files:
        return None
    raws = [json.loads(f.read_text()) for f in files]
    out = dict(raws[-1])
    for key in ("iterations", "hooks", "loaders", "probe_epochs"):
        out[key] = [x for r in raws for x in r[key]]
    out["training_s"] = sum(r["training_s"] for r in raws)
    out["sessions"] = len(raws)
    return out


def summarize(raw: dict, val_iters: int) -> dict:
    from benchmarks.stats import per_stage, projected_seconds, stage_switches, time_by_phase

    stages = per_stage(raw["iterations"], raw["planned_patch"], raw["planned_batch"])
    peak_by_epoch = {e["epoch"]: e["cuda_peak_mib"] for e in raw["probe_epochs"]}
    epochs_by_shape: dict[tuple, list[int]] = {}
    for it in raw["iterations"]:
        epochs_by_shape.setdefault((it["shape"][0], *it["shape"][2:]), []).append(it["epoch"])
    for st in stages:
        eps = set(epochs_by_shape.get((st["batch_size"], *st["patch_size"]), []))
        peaks = [peak_by_epoch[e] for e in eps if peak_by_epoch.get(e) is not None]
        st["cuda_peak_mib"] = max(peaks) if peaks else None
        steady = st["step_s"]
        st["first_step_extra_s"] = st["first_step_s"] - steady  # autotune / compile at the new shape
    return {
        "sessions": raw.get("sessions", 1),
        "training_s": raw["training_s"],
        "stages": stages,
        "switches": stage_switches(raw),
        "time_by_phase": time_by_phase(raw),
        "projected_s": projected_seconds(raw, val_iters),
    }


def run_train(
    args: argparse.Namespace, deadline: Deadline, phase: str, mode: str, compile_on: bool, kill: bool, **extra: str
) -> dict:
    """One ``nnUNetv2_train`` run (its own results folder), optionally killed and resumed."""
    trainer = PROBE[mode]
    env = base_env(args.work, args.dry, results=f"results_{phase}")
    env.update(knobs(args.epochs, args.iters, args.val_iters, **extra))
    if phase != "pgps":  # only PGPS's final validation is scored (and predicted from); the others time training
        env["GPU_PROBE_FINAL_VALIDATION"] = "off"  # probe_trainers.SKIP_VALIDATION
    if not args.dry:
        if compile_on:
            env.pop("nnUNet_compile", None)  # nnU-Net's CUDA default: compile
        else:
            env["nnUNet_compile"] = "f"
    fold = fold_dir(args.work, f"results_{phase}", trainer)
    log = args.work / f"train_{phase}.log"
    shown = {k: env[k] for k in sorted(env) if k.startswith(("PGPS_", "nnUNet_compile", "nnUNet_n_proc", "GPU_PROBE"))}
    result: dict = {"trainer": trainer, "env": shown}
    kill_on = rf": Epoch {args.kill_epoch}$" if kill else None
    first = _run(train_cmd(trainer, False, args.dry), env, log, deadline, kill_on=kill_on)
    result["run"] = first
    if kill and first["killed"] is not None:
        result["resume"] = _run(train_cmd(trainer, True, args.dry), env, log, deadline)
        record = fold / "pgps_record.json"
        if record.is_file():
            rec = json.loads(record.read_text())
            result["record_resumes"] = rec.get("resumes")
            result["record_epochs"] = [e["epoch"] for e in rec.get("epochs", [])]
    summary = fold / "validation" / "summary.json"
    if summary.is_file():
        result["final_validation_dice"] = json.loads(summary.read_text())["foreground_mean"]["Dice"]
    config = fold / "pgps_config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        result["pgps_config"] = {k: cfg.get(k) for k in ("dry_runs", "torch_compile", "cuda_graphs", "knobs")}
    raw = merged_raw(fold)
    if raw is not None:
        result["summary"] = summarize(raw, args.val_iters)
    return result


def run_predict(args: argparse.Namespace, deadline: Deadline) -> dict:
    env = base_env(args.work, args.dry, results="results_pgps")
    out = args.work / "predictions"
    raw = args.work / "nnUNet_raw" / DATASET
    cmd = [sys.executable, "-c", "from nnunetv2.inference.predict_from_raw_data import predict_entry_point as m; m()"]
    cmd += ["-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID), "-c", "3d_fullres"]
    cmd += ["-tr", PROBE["pgps"], "-f", "0"] + (["-device", "cpu", "--disable_tta"] if args.dry else [])
    result = _run(cmd, env, args.work / "predict.log", deadline)
    import nibabel as nib
    import numpy as np

    dice = {}
    for pred in sorted(out.glob("*.nii.gz")):
        ref = raw / "labelsTs" / pred.name
        a, b = np.asarray(nib.load(pred).dataobj), np.asarray(nib.load(ref).dataobj)
        dice[pred.name] = {
            str(c): float(2 * np.sum((a == c) & (b == c)) / max(1, np.sum(a == c) + np.sum(b == c))) for c in (1, 2)
        }
    result["dice"] = dice
    return result


def project_ratio(results: dict) -> dict | None:
    """PGPS / constant on nnU-Net's protocol, from the two runs' measured per-stage costs."""
    try:
        p = results["pgps"]["summary"]["projected_s"]
        c = results["constant"]["summary"]["projected_s"]
    except (KeyError, TypeError):
        return None
    if not p or not c:
        return None
    return {"pgps_over_constant": p / c, "pgps_projected_s": p, "constant_projected_s": c}


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="results folder ($OUT on the device)")
    ap.add_argument("--data", type=Path, default=REPO / ".gpu_carry" / "data" / "dataset.tar")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pgps_gpu_check"))
    ap.add_argument("--deadline-s", type=float, default=540.0, help="stop starting phases past this (s)")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--dry", action="store_true", help="CPU dry run: device cpu, tiny budget")
    ap.add_argument("--epochs", type=int, default=None, help="default: one per PGPS stage (dry: 3)")
    ap.add_argument("--iters", type=int, default=None, help="iterations per epoch (default 12; dry 2)")
    ap.add_argument("--val-iters", type=int, default=None, help="validation iterations (default 3; dry 1)")
    ap.add_argument("--kill-epoch", type=int, default=None, help="kill PGPS when it starts this epoch")
    ap.add_argument(
        "--train-compile",
        action="store_true",
        help="compile in every training run (nnU-Net's CUDA default; ~35 s per stage shape, 9 shapes per "
        "curriculum: does not fit one 10-minute call with all phases). Default: only the compile phase compiles",
    )
    ap.add_argument(
        "--trace-imports",
        type=Path,
        default=None,
        help="record every process's imports here, and block what the device image lacks (carry.ABSENT_ON_DEVICE)",
    )
    ap.add_argument("--steps-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps_worker:
        out = steps_worker(args)
        fileio.write_json(args.out, out)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.trace_imports is not None:
        global TRACE_DIR
        args.trace_imports.mkdir(parents=True, exist_ok=True)
        TRACE_DIR = args.trace_imports
    deadline = Deadline(args.deadline_s, args.dry)
    results: dict = {"started": time.time(), "dry": args.dry, "phases": {}}
    target = args.out / "device_check.json"

    def save() -> None:
        results["elapsed_s"] = elapsed()
        fileio.write_json(target, results)  # strict JSON (NaN -> null), atomic

    results["setup"] = setup(args)
    save()
    plans = json.loads((args.work / "nnUNet_preprocessed" / DATASET / "nnUNetPlans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    from pgps.nnunet.geometry import poolings_from_strides
    from pgps.schedule import build_schedule

    poolings = poolings_from_strides(conf["architecture"]["arch_kwargs"]["strides"], 3, "plan")
    n_stages = len(build_schedule(conf["patch_size"], poolings, 1000, conf["batch_size"], mode="pgps").stages)
    args.epochs = args.epochs or n_stages  # one epoch per stage: every stage measured, the projection complete
    args.iters = args.iters or (2 if args.dry else 12)
    args.val_iters = args.val_iters or (1 if args.dry else 3)
    args.kill_epoch = args.kill_epoch if args.kill_epoch is not None else max(1, args.epochs // 2)
    results["plan"] = {"patch_size": conf["patch_size"], "batch_size": conf["batch_size"], "poolings": list(poolings)}
    results["budget"] = {
        "epochs": args.epochs,
        "iters": args.iters,
        "val_iters": args.val_iters,
        "kill_epoch": args.kill_epoch,
    }
    wanted = args.phases.split(",")
    for phase in PHASES:
        if phase not in wanted:
            continue
        if not deadline.allows(phase):
            results["phases"][phase] = {"skipped": f"deadline: {deadline.left():.0f} s left, needs {NEEDS[phase]} s"}
            save()
            continue
        t0 = time.perf_counter()
        try:
            if phase == "steps":
                out = run_steps(args, deadline)
            elif phase == "predict":
                out = run_predict(args, deadline)
            elif phase == "compile":  # nnU-Net's default compile, the trainers' static shapes; 2 stages
                saved, args.epochs = args.epochs, 2
                out = run_train(args, deadline, phase, "pgps", compile_on=True, kill=False)
                args.epochs = saved
            elif phase == "graphs":
                out = run_train(args, deadline, phase, "pgps", args.train_compile, False, PGPS_CUDA_GRAPHS="on")
            else:
                mode = {"pgps": "pgps", "constant": "constant", "pgps_plus": "pgps+"}[phase]
                out = run_train(args, deadline, phase, mode, args.train_compile, kill=phase == "pgps")
        except Exception as exc:  # one phase failing must not lose the others' results
            out = {"error": f"{type(exc).__name__}: {exc}"}
        out["phase_s"] = time.perf_counter() - t0
        results["phases"][phase] = out
        save()
    results["projection"] = project_ratio({k: results["phases"].get(k, {}) for k in ("pgps", "constant")})
    save()
    print(json.dumps({k: v for k, v in results.items() if k != "phases"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
