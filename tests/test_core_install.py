"""`pip install pgps` is the core (trainers, `pgps schedule`, `pgps env`) and nothing of the pipeline.

Fast: the static import graph of src/ — what the core's modules import at load time is declared in
pyproject's core dependencies, and every third-party import anywhere is declared in the core or an
extra. Slow (marker ``core_install``, run last): a fresh venv on Python 3.12 with only the core
resolved from the package index (tests/core_venv.py, built in the background while the other tests
run) trains with ``nnUNetv2_train … -tr nnUNetTrainerPGPS`` and predicts with ``nnUNetv2_predict`` on
the reduced task, which the main venv's tools prepare and plan.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

import core_venv
from test_trainer_fixtures import CPU_ENV, DATASET, DATASET_ID, fold_dir, reduced_root

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
# what `pip install pgps` is for: the trainers nnU-Net loads, and the two core verbs
CORE_ROOTS = ("pgps.cli", "pgps.commands.schedule_cmd", "pgps.env", "pgps.paths")
# imports inside functions of core modules that need an extra; each must fail with one line naming it
GUARDED_LAZY = {"codecarbon": "energy tracking (PGPS_CODECARBON), pipeline extra"}
EXTRA_DISTRIBUTIONS_ABSENT = ("dvc", "codecarbon", "submitit", "docker")


# ----------------------------------------------------------------------------- static import graph
@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name as written
    lazy: bool  # inside a function body (runs only when called)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package: str) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(alias.name, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append(Import(base, lazy))
                found.extend(Import(f"{base}.{alias.name}", lazy) for alias in child.names)
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def _graph() -> dict[str, list[Import]]:
    graph = {}
    for path in sorted((SRC / "pgps").rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = _imports(path, package)
    return graph


def _parents(module: str) -> Iterator[str]:
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        yield ".".join(parts[:i])


def _closure(graph: dict[str, list[Import]], roots: list[str]) -> set[str]:
    """pgps modules loaded when ``roots`` are imported and their functions run (lazy pgps imports
    included: a trainer imports some of its own modules inside methods); parent packages too."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        for name in _parents(module):
            if name in graph and name not in seen:
                seen.add(name)
                todo.extend(i.module for i in graph[name] if i.module.split(".")[0] == "pgps")
    return seen


def _third_party(module: str) -> str | None:
    top = module.split(".")[0]
    return None if top in sys.stdlib_module_names or top in ("pgps", "__future__") else top


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    """Import names of pyproject's core dependencies, and of each extra (via installed metadata)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    by_distribution: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            by_distribution.setdefault(re.sub(r"[-_.]+", "-", dist).lower(), set()).add(module)

    def names(requirements: list[str]) -> set[str]:
        out: set[str] = set()
        for requirement in requirements:
            dist = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
            if dist != "pgps":
                key = re.sub(r"[-_.]+", "-", dist).lower()
                assert key in by_distribution, f"{dist} is not installed here: rebuild the venv (make setup)"
                out |= by_distribution[key]
        return out

    extras = project["optional-dependencies"]
    return names(project["dependencies"]), {k: names(v) for k, v in extras.items() if k != "dev"}  # dev: tools


def test_core_modules_load_only_core_dependencies() -> None:
    graph = _graph()
    trainers = [m for m in graph if m.startswith("pgps.trainers.")]
    core = _closure(graph, [*CORE_ROOTS, *trainers])
    core_names, _ = _declared()
    undeclared = sorted(
        f"{module}: {imp.module}" + (" (inside a function)" if imp.lazy else "")
        for module in core
        for imp in graph[module]
        if (top := _third_party(imp.module)) and top not in core_names and not (imp.lazy and top in GUARDED_LAZY)
    )
    assert not undeclared, "core modules import what `pip install pgps` does not install:\n" + "\n".join(undeclared)
    assert {m for m in core if m.startswith("pgps.nnunet")}, "the trainers' modules are in the core"


def test_every_third_party_import_is_declared() -> None:
    core_names, extras = _declared()
    declared = core_names.union(*extras.values())
    undeclared = sorted(
        f"{module}: {imp.module}"
        for module, imports in _graph().items()
        for imp in imports
        if (top := _third_party(imp.module)) and top not in declared
    )
    assert not undeclared, "imports of packages pyproject.toml does not name:\n" + "\n".join(undeclared)


# ------------------------------------------------------------------------------- the real core venv
@pytest.fixture(scope="module")
def core_bin() -> Iterator[Path]:
    """The core venv's bin/, built in the background since collection (tests/conftest.py)."""
    if core_venv.find_python() is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs python3.12 or python3.13 for the core-install test (set PGPS_CORE_PYTHON)")
        pytest.skip("no python3.12/python3.13 here (set PGPS_CORE_PYTHON)")
    home = core_venv.home()
    if not (home / "state.json").exists():  # normally started at collection (conftest.py); join that one
        core_venv.start(home)
    state = json.loads((home / "state.json").read_text())
    deadline = time.monotonic() + 2400
    while not (home / "result.json").exists():  # the build's last act; its process may not be our child
        if not core_venv.pid_alive(int(state["pid"])) and not (home / "result.json").exists():
            pytest.fail(f"core venv build died without a result:\n{(home / 'build.log').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"core venv build still running after 40 min:\n{(home / 'build.log').read_text()[-3000:]}")
        time.sleep(1)
    result = json.loads((home / "result.json").read_text())
    if not result["ok"]:
        pytest.fail(f"core venv build failed: {result.get('error')}\n{(home / 'build.log').read_text()[-4000:]}")
    print(f"\ncore venv: {result['python']}, install {result['install_s']:.0f} s (total {result['total_s']:.0f} s)")
    yield home / "venv" / "bin"
    if os.environ.get("CI"):  # CI machines start fresh: free the ~6 GB; a developer keeps it for the next run
        shutil.rmtree(home, ignore_errors=True)


def _run(cmd: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """From a neutral folder, as a user of the core runs it: not from this checkout, whose docker/ folder of
    image scripts (and anything else at its top level) would be importable from the working directory."""
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir())


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, (
        f"{proc.args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def _core_env(core_bin: Path, root: Path, results: Path, **extra: str) -> dict[str, str]:
    """`eval "$(pgps env --data ROOT)"` as the core venv's pgps prints it, results redirected to a
    folder of this test, CPU settings, and nothing inherited from the main venv."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PGPS_", "nnUNet_", "VIRTUAL_ENV", "PYTHON"))}
    base["PATH"] = f"{core_bin}{os.pathsep}{base.get('PATH', '')}"
    exports = _ok(_run([str(core_bin / "pgps"), "env", "--data", str(root)], base)).stdout
    env = dict(base)
    for line in exports.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'")
    assert env["nnUNet_extTrainer"] == str(
        core_bin.parent / "lib" / f"python{_minor(core_bin)}" / "site-packages" / "pgps" / "trainers"
    )
    env.update(CPU_ENV, nnUNet_results=str(results), **extra)
    return env


def _minor(core_bin: Path) -> str:
    out = subprocess.run([str(core_bin / "python"), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip()


@pytest.mark.slow
@pytest.mark.core_install
@pytest.mark.beside_daemons  # make test: after the Docker stage, whose ~10 GB are gone by then (disk)
@pytest.mark.timeout(3000)  # includes the wait for the background install
def test_core_install_trains_and_predicts(
    core_bin: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    root = reduced_root(tmp_path_factory)  # prepared and planned by the main venv's nnU-Net
    results = tmp_path / "results"
    env = _core_env(core_bin, root, results, PGPS_NUM_EPOCHS="2", PGPS_ITERS_PER_EPOCH="2", PGPS_VAL_ITERS="1")
    python, pgps = str(core_bin / "python"), str(core_bin / "pgps")

    _ok(_run([python, "-m", "pip", "check"], env))
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    absent = _ok(_run([python, "-c", probe, *EXTRA_DISTRIBUTIONS_ABSENT], env)).stdout.strip()
    assert absent == "[]", f"the core install pulled in an extra: {absent}"
    assert tuple(int(x) for x in _minor(core_bin).split(".")) >= (3, 12)

    for verb, extra in (("make-task", "pipeline"), ("grid", "grid"), ("docker", "docker")):
        proc = _run([pgps, verb, "--help"], env)
        assert proc.returncode == 2 and proc.stdout == "", (verb, proc)
        assert re.fullmatch(
            rf"pgps {verb}: error: needs the '{extra}' extra \(missing: [a-z_, ]+\): pip install 'pgps\[{extra}\]'\n",
            proc.stderr,
        ), proc.stderr

    planned = json.loads(_ok(_run([pgps, "schedule", "-d", str(DATASET_ID), "-c", "3d_fullres", "--epochs", "2",
                                   "--json"], env)).stdout)  # fmt: skip

    t0 = time.monotonic()
    _ok(_run(["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", "nnUNetTrainerPGPS", "-device", "cpu"], env))
    train_s = time.monotonic() - t0
    fold = fold_dir(results, "nnUNetTrainerPGPS")
    assert (fold / "checkpoint_final.pth").is_file()
    record = json.loads((fold / "pgps_record.json").read_text())
    assert record["schedule"] == planned, "the trainer ran another curriculum than `pgps schedule` printed"
    assert [e["epoch"] for e in record["epochs"]] == [0, 1]

    t0 = time.monotonic()
    out = tmp_path / "predicted"
    images = root / "nnUNet_raw" / DATASET / "imagesTs"
    predict = ["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(DATASET_ID), "-c", "3d_fullres"]
    _ok(_run([*predict, "-tr", "nnUNetTrainerPGPS", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"], env))
    predict_s = time.monotonic() - t0
    cases = sorted(p.name.removesuffix("_0000.nii.gz") for p in images.glob("*_0000.nii.gz"))
    assert cases and sorted(p.name.removesuffix(".nii.gz") for p in out.glob("*.nii.gz")) == cases
    print(f"core venv: nnUNetv2_train {train_s:.0f} s, nnUNetv2_predict {predict_s:.0f} s")


@pytest.mark.slow
@pytest.mark.core_install
@pytest.mark.beside_daemons  # make test: after the Docker stage, whose ~10 GB are gone by then (disk)
def test_core_install_energy_tracking_names_the_extra(core_bin: Path, tmp_path: Path) -> None:
    """Without codecarbon (the core install), asking for energy tracking is one PGPSError naming the extra, both
    from the tracker and from the knob a user sets (PGPS_CODECARBON), not a ModuleNotFoundError."""
    code = "from pgps.nnunet.energy import StageEnergy; StageEnergy('DEU', __import__('sys').argv[1], 'p', 'process')"
    proc = subprocess.run([str(core_bin / "python"), "-c", code, str(tmp_path)], capture_output=True, text=True,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pgps.errors.PGPSError:") and "pip install 'pgps[pipeline]'" in last, proc.stderr
    code = "from pgps.nnunet.knobs import read_knobs; read_knobs()"
    env = {"PATH": os.environ["PATH"], "PGPS_CODECARBON": "DEU"}
    proc = subprocess.run([str(core_bin / "python"), "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode != 0 and "PGPS_CODECARBON" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert "pip install 'pgps[pipeline]'" in proc.stderr.strip().splitlines()[-1]
