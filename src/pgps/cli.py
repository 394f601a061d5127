"""`pgps` command line: one verb per concern, each in its own module (imported lazily so
`pgps schedule` stays instant and never imports torch).

Every verb module exposes ``add_arguments(parser)`` and ``main(args) -> int``. A
:class:`~pgps.errors.PGPSError` (or a ScheduleError) becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pgps.errors import PGPSError
from pgps.schedule import ScheduleError

# verb -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "schedule": ("pgps.commands.schedule_cmd", "print the curriculum for a plan (table or --json)"),
    "env": ("pgps.env", "print shell exports that let nnU-Net's CLI find the data and our trainers"),
    "make-task": ("pgps.data.synthetic", "generate the reduced synthetic MSD-layout task"),
    "acquire": ("pgps.data.msd", "download (resumable, MD5-checked) or copy an MSD task tarball and extract it"),
    "validate-dataset": ("pgps.data.validate", "check an MSD-layout task or nnU-Net raw dataset"),
    "convert": ("pgps.pipeline.convert", "convert an MSD-layout task to nnU-Net raw format"),
    "plan": ("pgps.pipeline.plan", "plan and preprocess a dataset with nnU-Net's own planner"),
    "train": ("pgps.pipeline.train", "train one (task, trainer, fold) run with energy tracking"),
    "evaluate": ("pgps.pipeline.evaluate", "predict the test split and collect per-run metrics"),
    "report": ("pgps.report.build", "aggregate runs into results/metrics.json, report.md and plots"),
    "reproduce": ("pgps.pipeline.reproduce", "run the whole DVC pipeline (optionally a profile)"),
    "docker": ("pgps.docker_launcher", "build the CUDA image / run `reproduce` in it via the docker SDK"),
    "grid": ("pgps.grid.cli", "submit the experiment grid to SLURM or local GPUs, and show its status"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgps", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints usage / error and exits
        return 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"pgps {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except (PGPSError, ScheduleError) as exc:
        print(f"pgps {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
