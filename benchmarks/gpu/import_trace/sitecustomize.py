"""Import trace for the carry measurement (benchmarks/gpu/carry.py): with this folder on
PYTHONPATH and PGPS_IMPORT_TRACE set to a folder, every Python process -- spawned data-loader
and export workers included -- appends the top-level name of each module it imports, once, to
<folder>/<pid>.txt."""

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
