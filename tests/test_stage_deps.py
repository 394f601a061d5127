"""Every stage of dvc.yaml lists, under ``deps:``, every project module its commands load, so DVC re-runs a
stage whenever code it runs changes (and only code it runs: every listed module is loaded).

What a stage loads: the modules of the ``pgps`` verbs in its command, everything they import (at import
time or lazily inside a function: the import statements are read from the sources) and, for a verb that
starts ``nnUNetv2_train``/``nnUNetv2_predict``, the trainer modules: nnU-Net imports every module in
``nnUNet_extTrainer`` to find the trainer class. The import-time part is also measured for real: the same
modules imported in a clean interpreter, ``sys.modules`` compared. Fast except the trainer import (~10 s)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from pgps.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
STAGES: dict = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
VERB = re.compile(r"\bpgps ([a-z][a-z-]*)")
NNUNET_SCRIPTS_LOADING_TRAINERS = ("nnUNetv2_train", "nnUNetv2_predict")


def module_file(name: str) -> Path | None:
    """``pgps.a.b`` -> src/pgps/a/b.py or src/pgps/a/b/__init__.py (None: not a module of the project)."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Project modules named by any import statement in ``path`` (function bodies included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "pgps" and module_file(name) is not None}


def _with_packages(names: set[str]) -> set[str]:
    """Importing pgps.a.b also runs pgps/__init__.py and pgps/a/__init__.py."""
    out = set(names)
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


@cache
def closure(roots: frozenset[str]) -> frozenset[str]:
    """The project modules ``roots`` load, following every import statement."""
    seen: set[str] = set()
    todo = list(_with_packages(set(roots)))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is not None:
            todo.extend(_with_packages(_imports(path, name)))
    return frozenset(seen)


def trainer_modules() -> set[str]:
    return {f"pgps.trainers.{p.stem}" for p in (SRC / "pgps" / "trainers").glob("*.py") if p.stem != "__init__"}


def stage_roots(stage: dict) -> frozenset[str]:
    """The modules a stage's command starts from (its verbs, and the trainers where nnU-Net loads them)."""
    cmd = stage["do"]["cmd"] if "do" in stage else stage["cmd"]
    verbs = VERB.findall(cmd)
    assert verbs, f"no `pgps VERB` in {cmd!r}"
    roots = {COMMANDS[verb][0] for verb in verbs}
    sources = "".join(module_file(m).read_text() for m in roots)  # the verb's own code starts nnU-Net
    if any(script in sources for script in NNUNET_SCRIPTS_LOADING_TRAINERS):
        roots |= trainer_modules()
    return frozenset(roots)


def _docstring_only(path: Path) -> bool:
    """A package __init__ holding nothing but its docstring cannot change what a stage does."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def needed_files(modules: frozenset[str]) -> set[str]:
    files = {module_file(m) for m in modules}
    return {
        str(p.relative_to(ROOT))
        for p in files
        if p is not None and not (p.name == "__init__.py" and _docstring_only(p))
    }


def code_deps(stage: dict) -> list[str]:
    deps = (stage["do"] if "do" in stage else stage).get("deps", [])
    return [d for d in deps if d.startswith("src/")]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_deps_cover_every_module_the_stage_loads(name: str) -> None:
    stage = STAGES[name]
    need = needed_files(closure(stage_roots(stage)))
    deps = code_deps(stage)
    missing = sorted(p for p in need if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {name}: deps lack {missing}"
    unused = [d for d in deps if not any(covered(p, [d]) for p in need)]
    assert not unused, f"dvc.yaml stage {name}: deps list {unused}, which the stage never loads"


def _loaded_in_clean_interpreter(modules: frozenset[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {sorted(modules)!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'pgps')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_static_closure_contains_what_a_clean_import_loads() -> None:
    """The import-statement reading misses nothing that really gets imported (importlib tricks included)."""
    roots = frozenset().union(*(stage_roots(s) for s in STAGES.values()))
    loaded = {m for m in _loaded_in_clean_interpreter(roots) if module_file(m) is not None}
    assert loaded <= closure(roots), sorted(loaded - closure(roots))
