"""params.yaml / profiles: every invalid value stops the pipeline with ONE line naming the file and key.

Covers the schema's value rules (types are strict, ranges have upper bounds, names match whole strings),
the YAML reading rules (duplicate keys, deep nesting, alias bombs, NUL bytes, non-UTF-8), the lists that
are derived from their sources, and property-based checks: no YAML tree, however odd, gives a traceback
or a multi-line message. Fast (~20 s) except the one trainer-import cross-check (~10 s)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgps.data.catalog import MSD_MD5, TASK_VARIANT, VARIANTS
from pgps.errors import PGPSError
from pgps.params import load_params
from pgps.paths import TRAINERS_DIR
from pgps.schema import (
    BASELINE_TRAINERS,
    KNOWN_TASKS,
    KNOWN_TRAINERS,
    MAX_EPOCHS,
    MAX_ITERS,
    MAX_PROCESSES,
    MAX_SEED,
    MSD_TASKS,
    SYNTHETIC_TASKS,
    TRAINER_MODES,
)
from pgps.yamlfile import MAX_BYTES, MAX_DEPTH

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())
PROPERTY = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


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


def _error(path: Path) -> str:
    """load_params' one-line message for ``path`` (the test fails if it loads or raises anything else)."""
    with pytest.raises(PGPSError) as err:
        load_params(path)
    message = str(err.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


def test_shipped_params_and_profiles_are_valid() -> None:
    default = load_params(ROOT / "params.yaml")
    assert default.device == "cpu" and default.baseline in default.trainers
    assert {"constant", "pgps"} <= set(default.trainers)
    # the new knobs keep the behaviour from before they were params: checkpoint every epoch, no time budget
    budget = default.budget
    assert (budget.save_every, budget.time_budget, budget.min_full_share, budget.augmentation) == (
        1,
        "off",
        0.25,
        "stage",
    )
    # the default profile's bits: one thread (the same sums in the same order anywhere), AVX2 kernels on any x86-64
    assert default.runtime == {"compile": False, "da_workers": 0, "cuda_graphs": False, "threads": 1, "cpu_isa": "avx2"}
    assert len(default.folds) >= 3 and default.trainers[default.baseline].trainer_class.endswith("Constant")
    reduced = [s for s in default.trainers.values() if s.trainer_class.endswith("Constant") and s.name != "constant"]
    assert [s.budget.iters_per_epoch / budget.iters_per_epoch for s in reduced] == [0.4375]  # PGPS's 0.44, rounded
    smoke = load_params(ROOT / "profiles" / "smoke.yaml")
    assert smoke.folds == (0,) and smoke.tasks == ("Task903_PGPSSynthSmall",)
    full = load_params(ROOT / "profiles" / "full.yaml")
    assert len(full.tasks) == 10 and full.folds == (0, 1, 2, 3, 4) and full.device == "cuda"
    assert (full.budget.epochs, full.budget.iters_per_epoch) == (1000, 250)
    assert full.runtime["threads"] is None and full.runtime["cpu_isa"] is None  # a GPU box: not pinned
    reduced = {n: s.budget.iters_per_epoch for n, s in full.trainers.items() if s.trainer_class.endswith("Constant")}
    assert sorted(reduced.values()) == [25, 62, 125, 250]  # 10 / 25 / 50 / 100 % of 250 iterations


def test_lists_come_from_their_sources() -> None:
    assert MSD_TASKS == tuple(MSD_MD5)
    assert SYNTHETIC_TASKS == tuple(TASK_VARIANT) == tuple(v.task_name for v in VARIANTS.values())
    assert KNOWN_TASKS == MSD_TASKS + SYNTHETIC_TASKS
    files = {p.stem for p in TRAINERS_DIR.glob("*.py") if p.stem != "__init__"}
    assert set(KNOWN_TRAINERS) == files | {"nnUNetTrainer"}  # one class per file, named like the file
    assert {"nnUNetTrainer", "nnUNetTrainerConstant"} <= set(BASELINE_TRAINERS)  # budget variants join them
    assert all(TRAINER_MODES[name] == "constant" for name in BASELINE_TRAINERS)
    assert {n for n, m in TRAINER_MODES.items() if m == "constant"} == set(BASELINE_TRAINERS)


BAD = [
    # lists, names (whole-string matches: a trailing newline is not a name)
    ("tasks", ["Task99_Nope"], "tasks[0]", "unknown task 'Task99_Nope'"),
    ("tasks", ["Task901_PGPSSynth\n"], "tasks[0]", r"unknown task 'Task901_PGPSSynth\n'"),
    ("tasks", ["Task901_PGPSSynth\x00"], "tasks[0]", r"unknown task 'Task901_PGPSSynth\x00'"),
    ("tasks", [], "tasks", "must not be empty"),
    ("tasks", "Task901_PGPSSynth", "tasks", "must be a list"),
    ("tasks", ["Task901_PGPSSynth", "Task901_PGPSSynth"], "tasks", "lists the task 'Task901_PGPSSynth' twice"),
    ("folds", [5], "folds[0]", "invalid fold 5"),
    ("folds", [-1], "folds[0]", "invalid fold -1"),
    ("folds", ["0"], "folds[0]", "must be an integer, got '0'"),
    ("folds", [0, 0], "folds", "twice"),
    ("folds", [True], "folds[0]", "must be an integer, got True"),
    ("profile", "", "profile", "non-empty name"),
    ("profile", "default\n", "profile", r"got 'default\n'"),
    ("profile", "a b", "profile", "non-empty name"),
    ("trainers.bad-name", {"class": "nnUNetTrainerPGPS"}, "trainers.bad-name", "identifiers"),
    ("trainers.pgps\n", {"class": "nnUNetTrainerPGPS"}, r"trainers.'pgps\n'", "identifiers"),
    ("trainers.p\x1bgps", {"class": "nnUNetTrainerPGPS"}, r"trainers.'p\x1bgps'", "identifiers"),
    ("trainers." + "r" * 65, {"class": "nnUNetTrainerPGPS"}, "trainers." + "r" * 65, "at most 64"),
    ("trainers.pgps.class", "nnUNetTrainer_PGPS+", "trainers.pgps.class", "unknown trainer 'nnUNetTrainer_PGPS+'"),
    ("trainers.pgps.class", "nnUNetTrainerPGPS\n", "trainers.pgps.class", r"unknown trainer 'nnUNetTrainerPGPS\n'"),
    ("trainers.pgps.class", "DELETE", "trainers.pgps.class", "missing"),
    ("trainers", {}, "trainers", "at least one run"),
    ("trainers", ["constant"], "trainers", "must be a mapping"),
    ("baseline", "nope", "baseline", "'nope' is not one of the runs"),
    ("baseline", "pgps", "baseline", "constant-patch trainer"),
    # types are strict: no 2.0 for an integer, no "yes" for a boolean, YAML's unquoted off is a boolean
    ("budget.epochs", -3, "budget.epochs", "must be >= 1, got -3"),
    ("budget.epochs", 0, "budget.epochs", "must be >= 1, got 0"),
    ("budget.epochs", 2.0, "budget.epochs", "must be an integer, got 2.0"),
    ("budget.epochs", "4", "budget.epochs", "must be an integer, got '4'"),
    ("budget.epochs", None, "budget.epochs", "must be an integer, got None"),
    ("budget.iters_per_epoch", 2.5, "budget.iters_per_epoch", "must be an integer"),
    ("budget.val_iters", "DELETE", "budget.val_iters", "missing"),
    ("budget.dry_run", "sometimes", "budget.dry_run", "must be one of auto, on, off"),
    ("budget.dry_run", False, "budget.dry_run", "quote the word"),
    ("budget.epochz", 3, "budget.epochz", "unknown key (allowed: epochs, iters_per_epoch"),
    ("budget.save_every", 0, "budget.save_every", "must be >= 1"),
    ("budget.save_every", "DELETE", "budget.save_every", "missing"),
    ("budget.time_budget", "30 s", "budget.time_budget", "a duration such as 2.5h"),
    ("budget.time_budget", "600s\n", "budget.time_budget", r"got '600s\n'"),
    ("budget.time_budget", "0s", "budget.time_budget", "a positive duration"),
    ("budget.time_budget", "9999h", "budget.time_budget", "a year"),
    ("budget.time_budget", "101x", "budget.time_budget", "no budget"),
    ("budget.time_budget", False, "budget.time_budget", "quote the word"),
    ("budget.time_budget", 600, "budget.time_budget", "must be a string, got 600"),
    ("budget.min_full_share", 1.5, "budget.min_full_share", "must be <= 1.0, got 1.5"),
    ("budget.min_full_share", float("nan"), "budget.min_full_share", "finite"),
    ("budget.min_full_share", "0.25", "budget.min_full_share", "must be a number"),
    ("budget.augmentation", "always", "budget.augmentation", "must be one of stage, planned"),
    ("trainers.pgps.iters_fraction", 1.5, "trainers.pgps.iters_fraction", "fraction in (0, 1]"),
    ("trainers.pgps.iters_fraction", float("inf"), "trainers.pgps.iters_fraction", "finite"),
    ("trainers.pgps.epochs", -1, "trainers.pgps.epochs", "must be >= 1"),
    ("trainers.pgps.epochs", None, "trainers.pgps.epochs", "must be an integer, got None"),
    ("trainers.pgps.save_every", 1.0, "trainers.pgps.save_every", "must be an integer"),
    ("trainers.pgps.augmentation", "stages", "trainers.pgps.augmentation", "must be one of stage, planned"),
    ("trainers.pgps.lr", 0.1, "trainers.pgps.lr", "unknown key"),
    ("device", "tpu", "device", "must be one of cpu, cuda"),
    ("device", "cuda\n", "device", r"got 'cuda\n'"),
    ("seed", -1, "seed", "must be >= 0"),
    ("seed", True, "seed", "must be an integer"),
    ("codecarbon_country", "Germany", "codecarbon_country", "ISO 3166-1 alpha-3"),
    ("codecarbon_country", "DEU\n", "codecarbon_country", "ISO 3166-1 alpha-3"),
    ("codecarbon_country", False, "codecarbon_country", "quote the word"),
    ("plan.configuration", "3d_cascade", "plan.configuration", "must be one of"),
    ("plan.num_processes", 0, "plan.num_processes", "must be >= 1"),
    ("plan", [], "plan", "must be a mapping, got []"),
    ("runtime.compile", "yes", "runtime.compile", "true or false"),
    ("runtime.compile", 1, "runtime.compile", "true or false"),
    ("runtime.da_workers", -2, "runtime.da_workers", "must be >= 0"),
    ("runtime.cuda_graphs", "on", "runtime.cuda_graphs", "true or false"),
    ("runtime.threads", 0, "runtime.threads", "must be >= 1"),
    ("runtime.threads", "DELETE", "runtime.threads", "missing"),
    ("runtime.cpu_isa", "avx", "runtime.cpu_isa", "must be one of sse41, avx2, avx512"),
    ("evaluate.predict_test", "DELETE", "evaluate.predict_test", "missing"),
    ("report.alpha", 1.5, "report.alpha", "between 0 and 1"),
    ("report.alpha", True, "report.alpha", "must be a number"),
    ("epochs", 10, "epochs", "unknown key"),
    ("grid", {"partitionz": "gpu"}, "grid.partitionz", "unknown key"),
    ("grid", {"partition": "gpu\n#SBATCH --exclusive"}, "grid.partition", r"got 'gpu\n#SBATCH --exclusive'"),
]
# absurd magnitudes: one past each bound, and far past it
MAGNITUDES = [
    ("seed", MAX_SEED + 1),
    ("seed", 10**40),
    ("budget.epochs", MAX_EPOCHS + 1),
    ("budget.iters_per_epoch", MAX_ITERS + 1),
    ("budget.val_iters", 10**18),
    ("budget.save_every", MAX_EPOCHS + 1),
    ("plan.num_processes", MAX_PROCESSES + 1),
    ("runtime.da_workers", 10**9),
    ("runtime.threads", MAX_PROCESSES + 1),
    ("trainers.pgps.epochs", 10**12),
]


@pytest.mark.parametrize(("key", "value", "named", "problem"), BAD, ids=[f"{b[0]}={b[1]!r}" for b in BAD])
def test_invalid_value_names_file_and_key(tmp_path: Path, key: str, value: object, named: str, problem: str) -> None:
    path = _write(tmp_path, _with(key, value))
    message = _error(path)
    assert message.startswith(f"{path}: {named}: "), message
    assert problem in message, message


@pytest.mark.parametrize(("key", "value"), MAGNITUDES, ids=[f"{k}={v}" for k, v in MAGNITUDES])
def test_absurd_magnitudes_are_refused_with_the_reason(tmp_path: Path, key: str, value: int) -> None:
    message = _error(_write(tmp_path, _with(key, value)))
    assert f": {key}: must be <= " in message and f"got {value}" in message, message
    assert "(" in message.split("must be <= ")[1]  # the bound says why it is there


def test_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    tree = _with("seed", MAX_SEED)
    tree["budget"].update(epochs=MAX_EPOCHS, iters_per_epoch=MAX_ITERS, save_every=MAX_EPOCHS, min_full_share=1)
    tree["runtime"].update(threads=MAX_PROCESSES, cpu_isa="avx2")
    params = load_params(_write(tmp_path, tree))
    assert (params.seed, params.budget.epochs, params.budget.min_full_share) == (MAX_SEED, MAX_EPOCHS, 1.0)


def test_per_run_overrides_resolve_into_each_runs_budget(tmp_path: Path) -> None:
    tree = _with("trainers.constant_10pct", {"class": "nnUNetTrainerConstant", "iters_fraction": 0.1})
    tree["budget"].update(iters_per_epoch=250, time_budget="2.5h")
    tree["trainers"]["pgps"].update(time_budget=None, save_every=3, augmentation="planned", min_full_share=0.5)
    tree["trainers"]["rpss"]["time_budget"] = "0.5x"
    params = load_params(_write(tmp_path, tree))
    reduced, pgps, rpss = (params.trainer(n).budget for n in ("constant_10pct", "pgps", "rpss"))
    assert (params.trainer("constant_10pct").trainer_class, reduced.iters_per_epoch) == ("nnUNetTrainerConstant", 25)
    assert reduced.epochs == DEFAULT["budget"]["epochs"] and reduced.time_budget == "9000s"  # shared, normalised
    assert (pgps.time_budget, pgps.save_every, pgps.augmentation, pgps.min_full_share) == ("off", 3, "planned", 0.5)
    assert pgps.iters_per_epoch == 250 and rpss.time_budget == "0.5x" and rpss.save_every == 1


def test_both_ways_to_reduce_iterations_is_refused(tmp_path: Path) -> None:
    tree = _with("trainers.pgps", {"class": "nnUNetTrainerPGPS", "iters_per_epoch": 3, "iters_fraction": 0.5})
    assert _error(_write(tmp_path, tree)).endswith(
        "trainers.pgps.iters_fraction: give either iters_per_epoch or iters_fraction, not both"
    )


# ------------------------------------------------------------------------------------ YAML-level rules
DUPLICATES = [
    ("seed: 0\nseed: 1\n", "line 2", "duplicate key 'seed' (first at line 1"),
    ("budget:\n  epochs: 4\n  epochs: 400\n", "line 3", "duplicate key 'epochs' (first at line 2"),
    ("trainers: {pgps: {class: nnUNetTrainerPGPS}, pgps: {class: nnUNetTrainerRPSS}}\n", "line 1", "'pgps'"),
    ("grid:\n  stages:\n    train: {cpus: 1, cpus: 2}\n", "line 3", "duplicate key 'cpus'"),
    ("seed: 0\n'seed': 1\n", "line 2", "duplicate key 'seed'"),
]


@pytest.mark.parametrize(("text", "line", "problem"), DUPLICATES, ids=[d[2] for d in DUPLICATES])
def test_duplicate_keys_are_refused_with_their_lines(tmp_path: Path, text: str, line: str, problem: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text + yaml.safe_dump({k: v for k, v in DEFAULT.items() if k not in text}))
    message = _error(path)
    assert f"not valid YAML ({line}): " in message and problem in message, message


def test_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    """A YAML merge (``<<: *anchor``) overriding a key is legal YAML and no duplicate."""
    tree = copy.deepcopy(DEFAULT)
    text = yaml.safe_dump({k: v for k, v in tree.items() if k != "grid"})
    text += "grid:\n  default: &req {cpus: 1, mem_gb: 2, gpus: 0, time_min: 5}\n"
    text += "  stages:\n    train:\n      <<: *req\n      gpus: 1\n"
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert load_params(path).raw["grid"]["stages"]["train"] == {"cpus": 1, "mem_gb": 2, "gpus": 1, "time_min": 5}


def _nested(depth: int, opener: str, closer: str) -> str:
    return "seed: " + opener * depth + "0" + closer * depth + "\n"


@pytest.mark.parametrize(
    "text",
    [
        _nested(MAX_DEPTH + 1, "[", "]"),
        _nested(5000, "[", "]"),  # PyYAML alone: RecursionError
        _nested(5000, "{a: ", "}"),
        "".join(f"{'  ' * i}k{i}:\n" for i in range(MAX_DEPTH + 2)) + "  " * (MAX_DEPTH + 2) + "x: 1\n",
    ],
    ids=["one-too-deep", "5000-lists", "5000-flow-maps", "block-maps"],
)
def test_deep_nesting_is_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert f"nested deeper than {MAX_DEPTH} levels" in _error(path)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"seed: 0\x00\n", "unacceptable character #x0000"),
        (b"seed: 0\nprofile: \x1b[31mred\n", "unacceptable character #x001b"),
        (b"seed: \xff\xfe\n", "not UTF-8 text (byte 7)"),
        (b"seed: " + b"9" * 5000 + b"\n", "not valid YAML: Exceeds the limit"),
        (b"- a\n- list\n", "must be a YAML mapping of parameters, got list"),
        (b"", "is empty"),
        (b"seed: [0\n", "not valid YAML (line 2)"),
        (b"seed: !!python/object/apply:os.system [true]\n", "could not determine a constructor"),
        (b"a: &a [*a, *a]\n", "values once YAML aliases are expanded"),
        (
            b"x: &x [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + b"".join(
                f"x{i}: &x{i} [{', '.join(['*x' + (str(i - 1) if i else '')] * 10)}]\n".encode() for i in range(6)
            ),
            "values once YAML aliases are expanded",
        ),
        (b"# " + b"x" * MAX_BYTES + b"\n", f"larger than {MAX_BYTES} bytes"),
    ],
    ids=["nul", "escape", "not-utf8", "huge-int", "list", "empty", "unclosed", "python-tag", "cycle", "bomb", "big"],
)
def test_unreadable_files_are_one_line(tmp_path: Path, data: bytes, problem: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(data)
    assert problem in _error(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(PGPSError, match=r"nothere\.yaml: not found"):
        load_params(tmp_path / "nothere.yaml")
    with pytest.raises(PGPSError, match=r": is a directory"):
        load_params(tmp_path)


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    def report(path: Path) -> subprocess.CompletedProcess:
        argv = ["report", "--params", str(path), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "results")]
        return subprocess.run(
            [sys.executable, "-m", "pgps.cli", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=300
        )

    path = _write(tmp_path, _with("budget.epochs", -5))
    proc = report(path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"pgps report: error: {path}: budget.epochs: must be >= 1, got -5"
    path.write_text(yaml.safe_dump(DEFAULT) + "seed: 7\n")
    proc = report(path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "duplicate key 'seed'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()  # nothing half-written


# ------------------------------------------------------------------------------------ property-based
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**60), max_value=10**60)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["off", "on", "auto", "stage", "600s", "Task901_PGPSSynth", "nnUNetTrainerPGPS", "\x00", "\n"])
)
KEYS = st.text(max_size=8) | st.sampled_from(sorted({*DEFAULT, *DEFAULT["budget"], *DEFAULT["runtime"], "class"}))
TREES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)


def _dotted_paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += _dotted_paths(value, (*prefix, key))
    return out


PATHS = _dotted_paths(DEFAULT)


def _loads_or_one_line(path: Path) -> None:
    try:
        load_params(path)
    except PGPSError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and "\n" not in message and "\r" not in message, message


@PROPERTY
@given(tree=TREES)
def test_random_yaml_trees_never_crash(tmp_path: Path, tree: Any) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    _loads_or_one_line(path)


@PROPERTY
@given(where=st.sampled_from(PATHS), value=TREES)
def test_any_value_anywhere_in_the_real_file_is_loaded_or_one_line(tmp_path: Path, where: tuple, value: Any) -> None:
    tree = copy.deepcopy(DEFAULT)
    node = tree
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    _loads_or_one_line(path)


@PROPERTY
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_bytes_never_crash(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(yaml.safe_dump(DEFAULT).encode()[:300] + data)
    _loads_or_one_line(path)
