"""Session hooks that start slow shared work in the background right after collection: the core-install test's
fresh venv (tests/test_core_install.py, marker ``core_install``: minutes to download and install; the test runs
last, by which time the CPU-bound tests have overlapped it), and the smoke pipeline run that `make test`'s two
processes share (tests/smoke_run.py)."""

from __future__ import annotations

import pytest

import core_venv
import smoke_run


def _core_items(items: list[pytest.Item]) -> list[pytest.Item]:
    return [item for item in items if item.get_closest_marker("core_install")]


def _daemon_stage(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(name) for name in ("docker", "slurm"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Docker and SLURM stages first (`make test`'s second process runs the beside_daemons tests after them),
    the core-install test last; otherwise the order of collection."""
    core = _core_items(items)
    rest = [item for item in items if item not in core]
    items[:] = [i for i in rest if _daemon_stage(i)] + [i for i in rest if not _daemon_stage(i)] + core


_core_build_after_docker = False


def pytest_collection_finish(session: pytest.Session) -> None:
    global _core_build_after_docker
    if _core_items(session.items) and core_venv.needs_build() and core_venv.find_python():
        # not beside the Docker stage: its image (~10 GB) and the venv (~6 GB) did not fit on CI's disk together
        if any(item.get_closest_marker("docker") for item in session.items):
            _core_build_after_docker = True
        else:
            core_venv.start()
    # the smoke run shared with the other `make test` process (tests/smoke_run.py): started now, it overlaps the
    # first tests here, and the Docker stage gets it while its image builds
    if any("repro" in getattr(item, "fixturenames", ()) for item in session.items):
        smoke_run.start_in_background()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The core venv's build starts with the first test after the Docker stage, whose module teardown (the
    daemon and its data root removed) ran before this setup."""
    global _core_build_after_docker
    if _core_build_after_docker and not item.get_closest_marker("docker"):
        _core_build_after_docker = False
        core_venv.start()
