"""The report stage under real DVC, without training: a fresh copy of the repository, hand-built training
outputs run through the real `pgps evaluate`, then `dvc repro --single-item report`. What a reviewer types
must read well: `dvc metrics show` gives a few numeric columns per run (no strings, no NaN), and
`dvc plots show` draws exactly the plots dvc.yaml's top-level `plots:` declares (no "step vs <column>")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgps.params import load_params
from pgps.pipeline.evaluate import evaluate
from repo_copy import copy_repository
from report_fixtures import TASK, write_fold

BIN = Path(sys.executable).parent
RUNS = {"constant": "nnUNetTrainerConstant", "pgps": "nnUNetTrainerPGPS"}


def _dvc(*args: str, cwd: Path) -> str:
    env = dict(os.environ, PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("report_dvc") / "repo"
    ws.mkdir()
    copy_repository(ws)
    tree = yaml.safe_load((ws / "params.yaml").read_text())
    tree.update(tasks=[TASK], folds=[0])
    tree["trainers"] = {name: {"class": cls} for name, cls in RUNS.items()}
    (ws / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    params = load_params(ws / "params.yaml")
    cases = {"constant": [0.60, 0.62, 0.58, 0.70], "pgps": [0.65, 0.66, 0.63, 0.73]}
    for name, cls in RUNS.items():
        root = ws / "data" / "nnUNet_results" / TASK / name / "fold_0"
        write_fold(
            root, cls, 0, {f"c{i}": d for i, d in enumerate(cases[name])}, epoch_s=10.0 if name == "pgps" else 20.0
        )
        evaluate(params, root, TASK, name, 0, ws, None, ws / "results" / "runs" / TASK / name / "fold_0")
    _dvc("repro", "--single-item", "report", cwd=ws)
    return ws


def test_metrics_show_is_a_few_numeric_columns_per_run(repo: Path) -> None:
    shown = json.loads(_dvc("metrics", "show", "--json", cwd=repo))
    (workspace,) = shown.values()
    data = workspace["data"]["results/metrics.json"]["data"]

    def leaves(obj: object, prefix: str = "") -> dict[str, object]:
        if isinstance(obj, dict):
            return {k: v for key, val in obj.items() for k, v in leaves(val, f"{prefix}{key}.").items()}
        return {prefix[:-1]: obj}

    columns = leaves(data)
    assert all(v is None or isinstance(v, int | float) and not isinstance(v, bool) for v in columns.values()), columns
    for name in RUNS:
        mine = [c for c in columns if c.startswith(f"{TASK}.{name}.")]
        assert 2 <= len(mine) <= 8, mine
    # one fold: no spread -- null in the file (not 0), which DVC leaves out of its table
    assert f"{TASK}.constant.dice_std" not in columns
    assert json.loads((repo / "results" / "metrics.json").read_text())[TASK]["constant"]["dice_std"] is None
    assert set(columns) >= {f"{TASK}.pgps.p_holm", f"{TASK}.pgps.dice_delta", f"{TASK}.pgps.dice_folds.fold_0"}
    assert not [c for c in columns if "time" in c or "co2" in c]  # measured numbers live in timings.json
    table = _dvc("metrics", "show", "--md", cwd=repo)
    assert "dice_mean" in table and "nan" not in table.lower()


def test_plots_show_draws_only_the_declared_plots(repo: Path) -> None:
    shown = json.loads(_dvc("plots", "show", "--json", cwd=repo))
    assert not shown.get("errors"), shown.get("errors")
    declared = [next(iter(p)) for p in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]]
    ids = list(shown["data"])
    images = [i for i in ids if i.endswith(".png")]
    assert sorted(set(ids) - set(images)) == sorted(d for d in declared if d != "results/plots")
    assert sorted(Path(i).name for i in images) == sorted(p.name for p in (repo / "results" / "plots").iterdir())
    for plot_id in set(ids) - set(images):
        (plot,) = shown["data"][plot_id]
        assert "step" not in json.dumps(plot["content"]["encoding"]), plot_id
