"""The trainer classes this package ships, read from their source files (``src/pgps/trainers/*.py``) with ``ast``:
no torch, no nnU-Net, no pydantic, so the core CLI (``pgps schedule``) and the params schema share one list.

A class's curriculum is its ``pgps_mode`` (inherited from a base class defined there); a class whose name ends in
``_<N>epochs`` (nnU-Net's ``nnUNetTrainer_250epochs`` convention) trains N epochs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pgps.paths import TRAINERS_DIR

BUDGET_NAME = re.compile(r"_(\d+)epochs$")  # the budget ends a class name


def trainer_modes(folder: Path = TRAINERS_DIR) -> dict[str, str]:
    """Trainer class -> its ``pgps_mode``, for every class defined in ``folder/*.py``.

    A class without its own ``pgps_mode`` inherits the mode of a base class defined there; nnU-Net's own
    ``nnUNetTrainer`` (constant patch) is always available.
    """
    own: dict[str, str | None] = {}
    bases: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.ClassDef):
                bases[node.name] = [b.id for b in node.bases if isinstance(b, ast.Name)]
                own[node.name] = _class_constant(node, "pgps_mode")

    def mode(name: str, seen: frozenset[str] = frozenset()) -> str | None:
        if own.get(name) is not None:
            return own[name]
        inherited = (mode(b, seen | {name}) for b in bases.get(name, []) if b in own and b not in seen)
        return next((m for m in inherited if m is not None), None)

    found = {name: mode(name) for name in own}
    return {"nnUNetTrainer": "constant", **{n: m for n, m in found.items() if m is not None}}


def budget_epochs(class_name: str) -> int | None:
    """N for a class named ``..._<N>epochs``, else None."""
    match = BUDGET_NAME.search(class_name)
    return int(match.group(1)) if match else None


def _class_constant(node: ast.ClassDef, attribute: str) -> str | None:
    """The string literal assigned to ``attribute`` in a class body (``x = "..."`` or ``x: T = "..."``)."""
    for stmt in node.body:
        targets = (
            stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        )
        value = getattr(stmt, "value", None)
        if any(isinstance(t, ast.Name) and t.id == attribute for t in targets) and isinstance(value, ast.Constant):
            return value.value if isinstance(value.value, str) else None
    return None
