"""`pgps report`: results/metrics.json (DVC metric: deterministic numbers only), results/timings.json (the
measured ones), results/report.md and the self-contained results/report.html (same content), the PNG plots and
the plot data. `pgps report --readme-table` prints the README's result table from results/metrics.json.

Every file is written to a temp name and renamed; ``metrics.json`` is renamed LAST, so a report killed at any
point never leaves a partial file, and a complete ``metrics.json`` means the whole report is complete (under
DVC the killed stage is also simply not recorded in dvc.lock and re-runs).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pgps import fileio
from pgps.errors import PGPSError
from pgps.params import PARAMS_FILE, Params, load_params
from pgps.pipeline.evaluate import METRICS_NAME, TIMINGS_NAME
from pgps.report.aggregate import FoldRun, Results, aggregate
from pgps.report.content import TITLE, report_blocks
from pgps.report.document import html_page, markdown
from pgps.report.environment import environment
from pgps.report.jsonfiles import metrics_document, timings_document
from pgps.report.plots import render_pngs, write_plot_data
from pgps.report.tables import readme_table, summary_table

#: profiles whose budget is the paper's (1000 epochs x 250 iterations); any other is below convergence unless
#: params.yaml says ``report.converged: true``
CONVERGED_PROFILES = ("full",)
OUTPUTS = ("metrics.json", "timings.json", "report.md", "report.html", "plots", "plot_data")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=Path, default=Path("results/runs"), help="evaluate stage outputs")
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder (default results)")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (default params.yaml)")
    parser.add_argument(
        "--readme-table",
        action="store_true",
        help="print the README's result table from <out>/metrics.json (build nothing)",
    )


def convergence(params: Params) -> tuple[bool, str]:
    """Did these runs train to convergence? ``report.converged`` in params.yaml if given, else the profile."""
    budget = params.budget
    note = f"profile `{params.profile}`, {budget.epochs} epochs x {budget.iters_per_epoch} iterations"
    report = params.raw.get("report") or {}
    if report.get("converged") is not None:  # null: decided by the profile, as when the key is absent
        value = report["converged"]
        if not isinstance(value, bool):
            raise PGPSError(f"{params.path}: report.converged: must be true or false, got {value!r}")
        return value, f"{note}, report.converged: {str(value).lower()}"
    return params.profile in CONVERGED_PROFILES, note


def _load(path: Path, required: tuple[str, ...]) -> dict[str, Any]:
    data = fileio.read_json(path, "run the evaluate stage first: dvc repro")
    if not isinstance(data, dict):
        raise PGPSError(f"{path}: must be a JSON object")
    missing = [k for k in required if k not in data]
    if missing:
        raise PGPSError(f"{path}: missing {', '.join(missing)} (written by an older `pgps evaluate`? re-run it)")
    return data


def load_runs(params: Params, runs_dir: Path) -> dict[str, dict[str, list[FoldRun]]]:
    """``[task][run]`` -> per-fold evaluate outputs, exactly the grid params.yaml defines (stale extras ignored)."""
    runs: dict[str, dict[str, list[FoldRun]]] = {}
    for task in params.tasks:
        for name in params.trainers:
            for fold in params.folds:
                folder = runs_dir / task / name / f"fold_{fold}"
                metrics = _load(
                    folder / METRICS_NAME,
                    ("dice", "dice_per_class", "cases", "curve", "epochs_run", "budget", "trainer_class"),
                )
                timings = _load(folder / TIMINGS_NAME, ("clock", "epochs", "energy"))
                runs.setdefault(task, {}).setdefault(name, []).append(FoldRun(fold, metrics, timings))
    return runs


def build(params: Params, runs_dir: Path, out: Path) -> Results:
    runs = load_runs(params, runs_dir)
    converged, note = convergence(params)
    results = aggregate(
        runs, params.baseline, params.alpha, profile=params.profile, converged=converged, convergence_note=note
    )
    metrics, timings = metrics_document(results), timings_document(results)
    env = environment([f for by_run in runs.values() for folds in by_run.values() for f in folds])
    for name in OUTPUTS:
        fileio.clean_partials(out, name)
    with fileio.atomic_dir(out / "plots") as tmp:
        pngs = render_pngs(runs, results, tmp)
        images = {p: (tmp / p).read_bytes() for p in pngs}
    write_plot_data(runs, results, out / "plot_data")
    blocks = report_blocks(results, metrics, timings, env, pngs)
    fileio.write_json(out / "timings.json", timings, indent=2)
    fileio.write_text(out / "report.md", markdown(blocks))
    fileio.write_text(out / "report.html", html_page(blocks, TITLE, images))
    fileio.write_json(out / "metrics.json", metrics, indent=2)  # last: its presence means the report is complete
    return results


def main(args: argparse.Namespace) -> int:
    if args.readme_table:
        path = args.out / "metrics.json"
        print(readme_table(fileio.read_json(path, "run the report stage first: dvc repro"), str(path)), end="")
        return 0
    params = load_params(args.params)
    results = build(params, args.runs, args.out)
    metrics = fileio.read_json(args.out / "metrics.json")
    timings = fileio.read_json(args.out / "timings.json")
    print(summary_table(metrics, results.baseline, timings))
    print(f"wrote {args.out / 'metrics.json'}, timings.json, report.md, report.html, plots/ (in {args.out})")
    return 0
