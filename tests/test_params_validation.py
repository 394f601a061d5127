"""params.yaml / profiles: every invalid value stops the pipeline with one error naming the file and key."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgps.errors import PGPSError
from pgps.params import load_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def _write(tmp_path: Path, tree: object) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _with(change: str, value: object) -> dict:
    """The default params with one dotted key set (value ``DELETE`` removes it)."""
    tree = copy.deepcopy(DEFAULT)
    *parents, leaf = change.split(".")
    node = tree
    for key in parents:
        node = node[key]
    if value == "DELETE":
        del node[leaf]
    else:
        node[leaf] = value
    return tree


def test_shipped_params_and_profiles_are_valid() -> None:
    default = load_params(ROOT / "params.yaml")
    assert default.device == "cpu" and default.baseline in default.trainers
    assert {"constant", "pgps"} <= set(default.trainers)
    full = load_params(ROOT / "profiles" / "full.yaml")
    assert len(full.tasks) == 10 and full.folds == (0, 1, 2, 3, 4) and full.device == "cuda"
    assert (full.budget.epochs, full.budget.iters_per_epoch) == (1000, 250)
    reduced = {n: s.budget.iters_per_epoch for n, s in full.trainers.items() if s.trainer_class.endswith("Constant")}
    assert sorted(reduced.values()) == [25, 62, 125, 250]  # 10 / 25 / 50 / 100 % of 250 iterations


BAD = [
    ("tasks", ["Task99_Nope"], "tasks[0]", "unknown task 'Task99_Nope'"),
    ("tasks", [], "tasks", "non-empty list"),
    ("tasks", ["Task901_PGPSSynth", "Task901_PGPSSynth"], "tasks", "twice"),
    ("folds", [5], "folds[0]", "invalid fold 5"),
    ("folds", [-1], "folds[0]", "invalid fold -1"),
    ("folds", ["0"], "folds[0]", "invalid fold '0'"),
    ("budget.epochs", -3, "budget.epochs", "must be >= 1, got -3"),
    ("budget.epochs", 0, "budget.epochs", "must be >= 1, got 0"),
    ("budget.iters_per_epoch", 2.5, "budget.iters_per_epoch", "must be an integer"),
    ("budget.val_iters", "DELETE", "budget.val_iters", "missing"),
    ("budget.dry_run", "sometimes", "budget.dry_run", "must be one of auto, on, off"),
    ("budget.epochz", 3, "budget.epochz", "unknown key"),
    ("device", "tpu", "device", "must be one of cpu, cuda"),
    ("seed", -1, "seed", "must be >= 0"),
    ("seed", True, "seed", "must be an integer"),
    ("codecarbon_country", "Germany", "codecarbon_country", "ISO 3166-1 alpha-3"),
    ("trainers.pgps.class", "nnUNetTrainer_PGPS+", "trainers.pgps.class", "unknown trainer 'nnUNetTrainer_PGPS+'"),
    ("trainers.pgps.iters_fraction", 1.5, "trainers.pgps.iters_fraction", "fraction in (0, 1]"),
    ("trainers.pgps.epochs", -1, "trainers.pgps.epochs", "must be >= 1"),
    ("trainers.pgps.lr", 0.1, "trainers.pgps.lr", "unknown key"),
    ("trainers.bad-name", {"class": "nnUNetTrainerPGPS"}, "trainers.bad-name", "identifiers"),
    ("trainers", {}, "trainers", "at least one run"),
    ("baseline", "nope", "baseline", "'nope' is not one of the runs"),
    ("baseline", "pgps", "baseline", "constant-patch trainer"),
    ("plan.configuration", "3d_cascade", "plan.configuration", "must be one of"),
    ("plan.num_processes", 0, "plan.num_processes", "must be >= 1"),
    ("runtime.compile", "yes", "runtime.compile", "true or false"),
    ("runtime.da_workers", -2, "runtime.da_workers", "must be >= 0"),
    ("evaluate.predict_test", "DELETE", "evaluate.predict_test", "missing"),
    ("report.alpha", 1.5, "report.alpha", "between 0 and 1"),
    ("epochs", 10, "epochs", "unknown key"),
    ("profile", "", "profile", "non-empty"),
    ("grid", {"partitionz": "gpu"}, "grid.partitionz", "unknown key"),
]


@pytest.mark.parametrize(("key", "value", "named", "problem"), BAD, ids=[f"{b[0]}={b[1]!r}" for b in BAD])
def test_invalid_value_names_file_and_key(tmp_path: Path, key: str, value: object, named: str, problem: str) -> None:
    path = _write(tmp_path, _with(key, value))
    with pytest.raises(PGPSError) as err:
        load_params(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {named}: "), message
    assert problem in message, message


def test_not_yaml_and_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "params.yaml"
    broken.write_text("tasks: [Task901_PGPSSynth\nfolds: [0]\n")
    with pytest.raises(PGPSError, match=r"params\.yaml: not valid YAML \(line \d+\)"):
        load_params(broken)
    broken.write_text("- just\n- a list\n")
    with pytest.raises(PGPSError, match=r"params\.yaml: must be a YAML mapping"):
        load_params(broken)
    with pytest.raises(PGPSError, match=r"nothere\.yaml: not found"):
        load_params(tmp_path / "nothere.yaml")


def test_iters_fraction_gives_reduced_budget(tmp_path: Path) -> None:
    tree = _with("trainers.constant_10pct", {"class": "nnUNetTrainerConstant", "iters_fraction": 0.1})
    tree["budget"]["iters_per_epoch"] = 250
    spec = load_params(_write(tmp_path, tree)).trainer("constant_10pct")
    assert (spec.trainer_class, spec.budget.iters_per_epoch, spec.budget.epochs) == (
        "nnUNetTrainerConstant",
        25,
        DEFAULT["budget"]["epochs"],
    )


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path, _with("budget.epochs", -5))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pgps.cli",
            "report",
            "--params",
            str(path),
            "--runs",
            str(tmp_path / "runs"),
            "--out",
            str(tmp_path / "results"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"pgps report: error: {path}: budget.epochs: must be >= 1, got -5"
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()  # nothing half-written
