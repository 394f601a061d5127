"""Import trace for the carry measurement (benchmarks/gpu/carry.py): with this folder on
PYTHONPATH and PGPS_IMPORT_TRACE set to a folder, every Python process -- spawned data-loader
and export workers included -- appends the top-level name of each module it imports (or tries
to), once, to <folder>/<pid>.txt. PGPS_IMPORT_BLOCK (comma-separated top-level names) makes
those imports fail as they will on the device, where the packages are absent."""

import os
import sys

_OUT = os.environ.get("PGPS_IMPORT_TRACE")
if _OUT:
    _seen: set[str] = set()

    def _hook(event: str, args: tuple) -> None:
        if event != "import":
            return
        top = str(args[0]).split(".")[0]
        if top and top not in _seen:
            _seen.add(top)
            with open(os.path.join(_OUT, f"{os.getpid()}.txt"), "a") as fh:
                fh.write(top + "\n")

    sys.addaudithook(_hook)

_BLOCK = {n for n in os.environ.get("PGPS_IMPORT_BLOCK", "").split(",") if n}
if _BLOCK:
    import importlib.abc

    class _Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201
            if fullname.split(".")[0] in _BLOCK:
                raise ModuleNotFoundError(f"No module named {fullname!r} (blocked: absent on the device)")
            return None

    sys.meta_path.insert(0, _Blocked())
