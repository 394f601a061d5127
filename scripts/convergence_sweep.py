"""Has the constant-patch baseline converged at the default profile's budget? Measure it (issue 14.1).

The default profile is a miniature of the paper's experiment only if its baseline is trained to convergence: its
held-out Dice at the default budget B must be within 0.01 of its Dice at 2B (mean over the profile's folds, same
seed). This script trains the baseline run of params.yaml at several budgets with the pipeline's own verbs
(`pgps acquire/convert/plan/train`; every other number from params.yaml: task, seed, threads, CPU kernels,
validation iterations), scores each like the evaluate stage (nnU-Net's final validation, foreground mean Dice),
and keeps what a seeded re-run reproduces exactly in ``results/convergence.json``; ``render`` turns that into
``results/CONVERGENCE.md``. The default budget's row is the committed baseline itself: it must equal
results/metrics.json's Dice of the baseline (``check`` compares them). Seconds depend on the machine and its
load: they go to ``<work>/timings.json`` only.

    .venv/bin/python scripts/convergence_sweep.py run --budgets 10x16 20x16 40x16 --jobs 2
    .venv/bin/python scripts/convergence_sweep.py render
    .venv/bin/python scripts/convergence_sweep.py check
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

import pgps
from pgps import fileio
from pgps.errors import PGPSError
from pgps.params import Params, load_params
from pgps.report import records

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
RESULTS = ROOT / "results" / "convergence.json"
REPORT = ROOT / "results" / "CONVERGENCE.md"
METRICS = ROOT / "results" / "metrics.json"
TOLERANCE = 0.01  # |mean Dice(2B) - mean Dice(B)| for "converged" (issue 14.1)
BIN = Path(sys.executable).parent
_LOCK = threading.Lock()


def _budget(text: str) -> tuple[int, int]:
    epochs, _, iters = text.partition("x")
    try:
        return int(epochs), int(iters)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a budget is EPOCHSxITERATIONS, e.g. 20x16") from None


def _pgps(*args: str, cwd: Path) -> None:
    env = dict(os.environ, PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    proc = subprocess.run([str(BIN / "pgps"), *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PGPSError(f"pgps {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")


def prepare(work: Path, params_file: Path, task: str, seed: int) -> Path:
    """The task acquired, converted, planned and preprocessed in ``work`` (dvc.yaml's first three commands)."""
    shutil.copyfile(params_file, work / "params.yaml")  # the verbs read params.yaml in their working folder
    preprocessed = work / "data" / "nnUNet_preprocessed" / task
    if not preprocessed.is_dir():
        _pgps(
            "acquire", task, "--raw-dir", "data/raw", "--downloads-dir", "data/downloads", "--seed", str(seed), cwd=work
        )
        _pgps("validate-dataset", f"data/raw/{task}", "--layout", "msd", cwd=work)
        _pgps("convert", f"data/raw/{task}", "--out", f"data/nnUNet_raw/{task}", cwd=work)
        _pgps("plan", f"data/nnUNet_raw/{task}", "--out", f"data/nnUNet_preprocessed/{task}", cwd=work)
    return preprocessed


def sweep_params(base: dict[str, Any], run: str, fold: int, epochs: int, iters: int) -> dict[str, Any]:
    """params.yaml with one run (the baseline) on one fold at this budget; everything else unchanged."""
    tree = yaml.safe_load(yaml.safe_dump(base))
    tree["folds"] = [fold]
    tree["budget"]["epochs"], tree["budget"]["iters_per_epoch"] = epochs, iters
    tree["trainers"] = {run: base["trainers"][run]}
    tree["baseline"] = run
    return tree


#: the code a training's numbers come from (beside nnU-Net and torch, pinned by requirements.lock)
TRAINING_CODE = ("src/pgps/nnunet", "src/pgps/trainers", "src/pgps/schedule.py")


def code_hash(root: Path | None = None) -> str:
    """A short hash of TRAINING_CODE's files under ``root`` (default: the checkout the imported ``pgps`` package
    comes from, i.e. the code that trains): rows made by different trainer code are marked."""
    root = root or Path(pgps.__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for top in TRAINING_CODE:
        files = [root / top] if (root / top).is_file() else sorted((root / top).rglob("*.py"))
        for path in files:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def train_one(work: Path, preprocessed: Path, base: dict, run: str, fold: int, budget: tuple[int, int]) -> dict:
    """One training (skipped when its output exists) -> its row: Dice overall, per class and per case."""
    epochs, iters = budget
    name = f"{run}_{epochs}x{iters}_fold{fold}"
    params_file = work / "params" / f"{name}.yaml"
    params_file.parent.mkdir(parents=True, exist_ok=True)
    params_file.write_text(yaml.safe_dump(sweep_params(base, run, fold, epochs, iters), sort_keys=False))
    out = work / "runs" / name
    start = time.monotonic()
    if not out.is_dir():
        _pgps(
            "train", "--trainer", run, "--fold", str(fold), "--preprocessed", str(preprocessed),
            "--out", str(out), "--params", str(params_file), cwd=work,
        )  # fmt: skip
    seconds = time.monotonic() - start
    path = next(out.glob(f"Dataset*/*/fold_{fold}/validation/summary.json"))
    summary = fileio.read_json(path)
    dice = records.foreground_dice(summary, path)
    with _LOCK:
        print(f"{name}: Dice {dice:.4f} ({seconds:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
        times = fileio.read_json(work / "timings.json") if (work / "timings.json").is_file() else {}
        if seconds > 1:
            times[name] = {"wall_s": round(seconds, 1), "load_1min_at_end": round(os.getloadavg()[0], 2)}
            fileio.write_json(work / "timings.json", times)
    return {
        "epochs": epochs,
        "iters_per_epoch": iters,
        "fold": fold,
        "dice": dice,
        "dice_classes": {k: v["Dice"] for k, v in summary["mean"].items()},
        "cases": records.case_dice(summary, path),
        "source": "scripts/convergence_sweep.py run",
        "trainer_code": code_hash(),
    }


def adopt(args: argparse.Namespace) -> int:
    """The default budget's rows from a pipeline run (``<workspace>/results/runs``): the baseline's own trainings
    at that budget, so the sweep needs no second copy of them."""
    params = load_params(PARAMS)
    ws = args.workspace.resolve()
    if load_params(ws / "params.yaml").budget != params.budget:
        raise PGPSError(f"{ws / 'params.yaml'}: another budget than {PARAMS}")
    document = _document(params, params.baseline)
    rows = []
    for fold in params.folds:
        path = ws / "results" / "runs" / params.tasks[0] / params.baseline / f"fold_{fold}" / "metrics.json"
        m = fileio.read_json(path, "run the pipeline there first")
        rows.append(
            {
                "epochs": params.budget.epochs,
                "iters_per_epoch": params.budget.iters_per_epoch,
                "fold": fold,
                "dice": m["dice"],
                "dice_classes": m["dice_per_class"],
                "cases": m["cases"],
                "source": "pgps reproduce (the train and evaluate stages)",
                "trainer_code": code_hash(ws),
            }
        )
    _store(document, rows)
    return render()


def _document(params: Params, run: str) -> dict[str, Any]:
    """results/convergence.json as far as it holds rows of this setting (else a new one)."""
    previous = fileio.read_json(RESULTS) if RESULTS.is_file() else {"rows": []}
    same = previous.get("run") == run and previous.get("setting") == setting(params, run)
    return {"run": run, "setting": setting(params, run), "rows": previous["rows"] if same else []}


def setting(params: Params, run: str) -> dict[str, Any]:
    """What else decides the numbers: a row is comparable with another (and with the pipeline's) only under the
    same setting."""
    spec = params.trainer(run)
    return {
        "task": params.tasks[0],
        "trainer_class": spec.trainer_class,
        "val_iters": spec.budget.val_iters,
        "seed": params.seed,
        "threads": params.runtime["threads"],
        "cpu_isa": params.runtime["cpu_isa"],
        "device": params.device,
        "configuration": params.configuration,
    }


def _store(document: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Merge ``rows`` into the file's rows of the same setting (a re-measured row replaces the old one) and write
    it, under a lock: sweeps of other folds or budgets may run at the same time."""
    key = lambda r: (r["epochs"], r["iters_per_epoch"], r["fold"])  # noqa: E731
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        on_disk = fileio.read_json(RESULTS) if RESULTS.is_file() else {}
        same = (on_disk.get("run"), on_disk.get("setting")) == (document["run"], document["setting"])
        merged = {key(r): r for r in (on_disk["rows"] if same else [])} | {key(r): r for r in document["rows"] + rows}
        document["rows"] = sorted(merged.values(), key=lambda r: (r["epochs"] * r["iters_per_epoch"], r["fold"]))
        fileio.write_json(RESULTS, document)


def run_sweep(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    base = yaml.safe_load(Path(args.params).read_text())
    run = args.run or params.baseline
    task = params.tasks[0]
    folds = args.folds or list(params.folds)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    preprocessed = prepare(work, Path(args.params), task, params.seed)
    document = _document(params, run)
    todo = [(b, f) for b in args.budgets for f in folds]  # smallest budgets first: the answer comes soonest

    def one(item: tuple[tuple[int, int], int]) -> None:
        row = train_one(work, preprocessed, base, run, item[1], item[0])
        with _LOCK:
            _store(document, [row])

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, todo))
    return render()


def summarise(document: dict[str, Any]) -> tuple[list[int], list[dict[str, Any]]]:
    """The folds measured at every budget, and per budget measured on all of them: Dice per fold and the mean."""
    by_budget: dict[tuple[int, int], dict[int, float]] = {}
    for r in document["rows"]:
        by_budget.setdefault((r["epochs"], r["iters_per_epoch"]), {})[r["fold"]] = r["dice"]
    folds = sorted(set.intersection(*(set(d) for d in by_budget.values()))) if by_budget else []
    out = []
    for (epochs, iters), dice in sorted(by_budget.items(), key=lambda kv: kv[0][0] * kv[0][1]):
        values = [dice[f] for f in folds]
        if values:
            out.append({"epochs": epochs, "iters": iters, "dice": dice, "mean": sum(values) / len(values)})
    return folds, out


def doubled(budget: tuple[int, int], measured: set[tuple[int, int]]) -> tuple[int, int] | None:
    """Twice the budget among the measured ones: the same epochs with twice the iterations each (the same
    curriculum and learning-rate steps, each epoch twice as long), else twice the epochs."""
    e, i = budget
    return next((b for b in ((e, 2 * i), (2 * e, i)) if b in measured), None)


def gaps(rows: list[dict[str, Any]]) -> dict[tuple[int, int], tuple[tuple[int, int], float]]:
    """Budget B -> (2B, mean Dice(2B) - mean Dice(B)), for every B whose doubled budget was measured too."""
    means = {(r["epochs"], r["iters"]): r["mean"] for r in rows}
    out = {}
    for budget, mean in means.items():
        twice = doubled(budget, set(means))
        if twice is not None:
            out[budget] = (twice, means[twice] - mean)
    return out


def _dice(document: dict[str, Any], fold: int, epochs: int, iters: int) -> float:
    return next(
        r["dice"] for r in document["rows"] if (r["fold"], r["epochs"], r["iters_per_epoch"]) == (fold, epochs, iters)
    )


def render(_args: argparse.Namespace | None = None) -> int:
    document = fileio.read_json(RESULTS)
    folds, rows = summarise(document)
    gap = gaps(rows)
    params = load_params(PARAMS)
    default = (params.budget.epochs, params.budget.iters_per_epoch)
    s = document["setting"]
    lines = [
        "# Convergence of the constant-patch baseline at the default profile's budget",
        "",
        "<!-- generated by scripts/convergence_sweep.py render from results/convergence.json; do not edit -->",
        "",
        f"Task `{s['task']}`, run `{document['run']}` (`{s['trainer_class']}`, {s['configuration']}), seed "
        f"{s['seed']}, {s['val_iters']} validation iteration(s) per epoch, device {s['device']}, threads "
        f"{s['threads']}, CPU kernels {s['cpu_isa'] or 'unpinned'}: held-out Dice (nnU-Net's final validation, "
        f"mean over the foreground labels) on folds {', '.join(map(str, folds))} of nnU-Net's split, each budget "
        "trained from scratch (nnU-Net's learning rate decays to 0 at the end of every budget). "
        f"Converged at budget B: |mean Dice(2B) - mean Dice(B)| <= {TOLERANCE}.",
        "",
        "| budget (epochs x iterations) | iterations | "
        + " | ".join(f"fold {f}" for f in folds)
        + " | mean | mean Dice(2B) - mean Dice(B) |",
        "|---|---|" + "---|" * len(folds) + "---|---|",
    ]
    for r in rows:
        budget = (r["epochs"], r["iters"])
        twice, g = gap.get(budget, (None, None))
        verdict = (
            ""
            if twice is None or g is None
            else f"{g:+.4f} (2B = {twice[0]} x {twice[1]})"
            + (" converged" if abs(g) <= TOLERANCE else " not converged")
        )
        mark = " **(default)**" if budget == default else ""
        lines.append(
            f"| {r['epochs']} x {r['iters']}{mark} | {r['epochs'] * r['iters']} | "
            + " | ".join(f"{r['dice'][f]:.4f}" for f in folds)
            + f" | {r['mean']:.4f} | {verdict} |"
        )
    partial = sorted(
        {(r["fold"], r["epochs"], r["iters_per_epoch"]) for r in document["rows"] if r["fold"] not in folds}
    )
    if partial:
        lines += [
            "",
            "Measured on some budgets only, so left out of the means: "
            + "; ".join(f"fold {f} at {e} x {i}: {_dice(document, f, e, i):.4f}" for f, e, i in partial)
            + ".",
        ]
    twice, g = gap.get(default, (None, None))
    sources = sorted({f"{r['source']} (trainer code {r['trainer_code']})" for r in document["rows"]})
    lines += [
        "",
        f"**Verdict for the default budget {default[0]} x {default[1]}**: "
        + (
            "not measured at twice the budget"
            if twice is None or g is None
            else f"mean Dice(2B = {twice[0]} x {twice[1]}) - mean Dice(B) = {g:+.4f}: "
            + ("converged" if abs(g) <= TOLERANCE else f"NOT converged (more than {TOLERANCE})")
        )
        + ".",
        "",
        "Rows from: " + "; ".join(sources) + f". The trainer code hash covers {', '.join(TRAINING_CODE)}.",
        "",
        "Reproduce: `.venv/bin/python scripts/convergence_sweep.py run --budgets "
        + " ".join(f"{r['epochs']}x{r['iters']}" for r in rows if (r["epochs"], r["iters"]) != default)
        + "`; the default budget's rows are the pipeline's own baseline trainings (`pgps reproduce` in a fresh copy, "
        "then `scripts/convergence_sweep.py adopt <copy>`), and `scripts/convergence_sweep.py check` holds them "
        "against results/metrics.json.",
    ]
    fileio.write_text(REPORT, "\n".join(lines) + "\n")
    print(REPORT.read_text())
    return 0


def check(_args: argparse.Namespace | None = None) -> int:
    """The default budget's rows equal the committed baseline's Dice per fold (the same trainings, same bits)."""
    params = load_params(PARAMS)
    document = fileio.read_json(RESULTS)
    if document["setting"] != setting(params, params.baseline):
        raise PGPSError(f"{RESULTS}: measured under {document['setting']}, params.yaml says otherwise")
    metrics = fileio.read_json(METRICS)[params.tasks[0]][params.baseline]["dice_folds"]
    default = (params.budget.epochs, params.budget.iters_per_epoch)
    rows = {r["fold"]: r["dice"] for r in document["rows"] if (r["epochs"], r["iters_per_epoch"]) == default}
    wrong = {f: (rows.get(f), metrics[f"fold_{f}"]) for f in params.folds if rows.get(f) != metrics[f"fold_{f}"]}
    if wrong:
        raise PGPSError(f"{RESULTS}: the default budget's Dice differ from {METRICS} (sweep, pipeline): {wrong}")
    print(f"{RESULTS}: the default budget's rows are the pipeline's baseline, bit for bit ({len(rows)} folds)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("run", help="train the baseline at these budgets (smallest first), then render")
    p.add_argument("--budgets", type=_budget, nargs="+", required=True, help="EPOCHSxITERATIONS, e.g. 20x16")
    p.add_argument("--run", default=None, help="run name under trainers (default: params.yaml's baseline)")
    p.add_argument("--folds", type=int, nargs="+", default=None, help="default: params.yaml's folds")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once (each with params.yaml's threads)")
    p.add_argument("--params", type=Path, default=PARAMS)
    p.add_argument("--work", type=Path, default=ROOT / "data" / "work" / "convergence")
    a = sub.add_parser("adopt", help="the default budget's rows from a pipeline run's results/runs")
    a.add_argument("workspace", type=Path, help="where `pgps reproduce` ran (a fresh copy of the repository)")
    sub.add_parser("render", help="results/convergence.json -> results/CONVERGENCE.md")
    sub.add_parser("check", help="the default budget's rows against results/metrics.json")
    args = parser.parse_args()
    verbs = {"run": run_sweep, "adopt": adopt, "render": render, "check": check}
    try:
        return verbs[args.verb](args)
    except PGPSError as exc:
        print(f"convergence_sweep: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
