"""`pgps report`: results/metrics.json (DVC metrics), results/report.md, results/plots/*.png and the plot data.

Every file is written to a temp name and renamed; ``metrics.json`` is renamed LAST, so a report killed at any
point never leaves a partial file, and a complete ``metrics.json`` means the whole report is complete (under
DVC the killed stage is also simply not recorded in dvc.lock and re-runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pgps import fileio
from pgps.errors import PGPSError
from pgps.params import PARAMS_FILE, Params, load_params
from pgps.pipeline.evaluate import METRICS_NAME
from pgps.report.aggregate import aggregate
from pgps.report.environment import environment
from pgps.report.markdown import report_markdown, summary_table
from pgps.report.plots import render_pngs, write_plot_data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=Path, default=Path("results/runs"), help="evaluate stage outputs")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)


def load_runs(params: Params, runs_dir: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``[task][run]`` -> per-fold metrics, exactly the grid params.yaml defines (stale extra runs ignored)."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task in params.tasks:
        for name in params.trainers:
            for fold in params.folds:
                path = runs_dir / task / name / f"fold_{fold}" / METRICS_NAME
                try:
                    data = json.loads(path.read_text())
                except FileNotFoundError:
                    raise PGPSError(f"{path}: not found (run the evaluate stage first: dvc repro)") from None
                except json.JSONDecodeError as exc:
                    raise PGPSError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
                missing = [k for k in ("dice", "cases", "train_time_s", "energy", "curve") if k not in data]
                if missing:
                    raise PGPSError(f"{path}: missing {', '.join(missing)}")
                runs.setdefault(task, {}).setdefault(name, []).append(data)
    return runs


def build(params: Params, runs_dir: Path, out: Path) -> dict[str, Any]:
    runs = load_runs(params, runs_dir)
    metrics = {
        "profile": params.profile,
        "folds": list(params.folds),
        "baseline": params.baseline,
        "tasks": aggregate(runs, params.baseline, params.alpha),
    }
    env = environment([f for by_run in runs.values() for folds in by_run.values() for f in folds])
    fileio.clean_partials(out, "plots")
    with fileio.atomic_dir(out / "plots") as tmp:
        pngs = render_pngs(runs, metrics, params.baseline, tmp)
    write_plot_data(runs, metrics, out / "plot_data")
    fileio.write_text(out / "report.md", report_markdown(metrics, env, params.baseline, params.alpha, pngs))
    fileio.write_json(
        out / "metrics.json", metrics, indent=2, sort_keys=True
    )  # last: its presence means the report is complete
    return metrics


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    metrics = build(params, args.runs, args.out)
    print(summary_table(metrics, params.baseline))
    print(f"wrote {args.out / 'metrics.json'}, {args.out / 'report.md'}, {args.out / 'plots'}/")
    return 0
