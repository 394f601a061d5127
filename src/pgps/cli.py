"""`pgps` command line: one verb per concern, each in its own module (imported lazily so
`pgps schedule` stays instant and never imports torch).

Every verb module exposes ``add_arguments(parser)`` and ``main(args) -> int``. A
:class:`~pgps.errors.PGPSError` (or a ScheduleError) becomes one line on stderr and exit 2; so does
a verb whose optional dependencies (``pip install 'pgps[EXTRA]'``) are not installed. Output piped
into a reader that stops early (``pgps schedule … | head -1``) ends the verb quietly, like a Unix tool.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import select
import signal
import sys
from typing import NamedTuple

from pgps import __version__
from pgps.errors import PGPSError, one_line
from pgps.schedule import ScheduleError


class Verb(NamedTuple):
    module: str
    help: str
    extra: str | None  # the pip extra the verb needs beyond the core install; None = core


# verb -> where it lives, one-line help, and the extra it needs (pyproject's optional-dependencies)
COMMANDS: dict[str, Verb] = {
    "schedule": Verb("pgps.commands.schedule_cmd", "print the curriculum for a plan (table or --json)", None),
    "env": Verb("pgps.env", "print shell exports that let nnU-Net's CLI find the data and our trainers", None),
    "make-task": Verb("pgps.data.synthetic", "generate the reduced synthetic MSD-layout task", "pipeline"),
    "acquire": Verb(
        "pgps.data.msd", "download (resumable, MD5-checked) or copy an MSD task tarball and extract it", "pipeline"
    ),
    "validate-dataset": Verb("pgps.data.validate", "check an MSD-layout task or nnU-Net raw dataset", "pipeline"),
    "convert": Verb("pgps.pipeline.convert", "convert an MSD-layout task to nnU-Net raw format", "pipeline"),
    "plan": Verb("pgps.pipeline.plan", "plan and preprocess a dataset with nnU-Net's own planner", "pipeline"),
    "train": Verb("pgps.pipeline.train", "train one (task, trainer, fold) run with energy tracking", "pipeline"),
    "evaluate": Verb("pgps.pipeline.evaluate", "predict the test split and collect per-run metrics", "pipeline"),
    "report": Verb("pgps.report.build", "aggregate runs into results/metrics.json, report.md and plots", "pipeline"),
    "reproduce": Verb("pgps.pipeline.reproduce", "run the whole DVC pipeline (optionally a profile)", "pipeline"),
    "docker": Verb("pgps.docker_launcher", "build the CUDA image / run `reproduce` in it via the docker SDK", "docker"),
    "grid": Verb("pgps.grid.cli", "submit the experiment grid to SLURM or local GPUs, and show its status", "grid"),
}

# extra -> the top-level modules it provides (import names of pyproject's optional-dependencies;
# tests/test_cli.py checks the two agree)
_PIPELINE = ("dvc", "codecarbon", "yaml", "pydantic", "scipy", "matplotlib", "nibabel", "tqdm")
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "pipeline": _PIPELINE,
    "grid": ("submitit", *_PIPELINE),
    "docker": ("docker", "requests", "urllib3"),
}

EXIT_ERROR = 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a writer killed by SIGPIPE (141)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgps", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pgps {__version__}", help="print the version")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, verb in COMMANDS.items():
        suffix = f" [extra: {verb.extra}]" if verb.extra else ""
        sub.add_parser(name, help=verb.help + suffix, add_help=False)
    return parser


def verb_parser(name: str) -> argparse.ArgumentParser:
    """The full parser of one verb (imports the verb's module)."""
    verb = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"pgps {name}", description=verb.help)
    importlib.import_module(verb.module).add_arguments(parser)
    return parser


def missing_modules(extra: str) -> list[str]:
    """Modules of ``extra`` that are not installed (looked up, not imported: this stays fast)."""
    return [m for m in EXTRA_MODULES[extra] if importlib.util.find_spec(m) is None]


def extra_hint(extra: str, missing: list[str]) -> str:
    return f"needs the '{extra}' extra (missing: {', '.join(missing)}): pip install 'pgps[{extra}]'"


def extra_of_module(module: str | None) -> str | None:
    """The extra that provides top-level module ``module``, if any (the first one listed)."""
    top = (module or "").split(".")[0]
    return next((extra for extra, modules in EXTRA_MODULES.items() if top in modules), None)


def _stdout_closed() -> bool:
    """True when nobody reads our stdout any more (the reader of the pipe has exited)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _quiet_broken_pipe() -> int:
    """Drop what is still buffered for the closed pipe, so the interpreter's exit flush stays silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _run(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints usage / version / an error and exits
        return EXIT_ERROR
    name = argv[0]
    verb = COMMANDS[name]
    if verb.extra and (missing := missing_modules(verb.extra)):
        print(f"pgps {name}: error: {extra_hint(verb.extra, missing)}", file=sys.stderr)
        return EXIT_ERROR
    try:
        parser = verb_parser(name)
        args = parser.parse_args(argv[1:])
        return int(importlib.import_module(verb.module).main(args) or 0)
    except (PGPSError, ScheduleError) as exc:
        print(f"pgps {name}: error: {one_line(exc)}", file=sys.stderr)  # one line, whatever names it carries
        return EXIT_ERROR
    except ModuleNotFoundError as exc:
        extra = extra_of_module(exc.name)
        if extra is None:
            raise
        print(f"pgps {name}: error: {extra_hint(extra, [exc.name or '?'])}", file=sys.stderr)
        return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _run(argv)
        sys.stdout.flush()  # inside the try: a reader gone before our last write is caught here
        return code
    except SystemExit as exc:  # argparse's --help, --version and usage errors
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            return _quiet_broken_pipe()
        if exc.code in (0, None) and _stdout_closed():  # argparse swallows a failed write of its own
            return _quiet_broken_pipe()
        raise exc
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a pipe of the verb's own (a subprocess, a socket) broke: a real error
        return _quiet_broken_pipe()


if __name__ == "__main__":
    sys.exit(main())
