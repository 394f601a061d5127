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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    core = _core_items(items)
    if core:
        items[:] = [item for item in items if item not in core] + core


def pytest_collection_finish(session: pytest.Session) -> None:
    if _core_items(session.items) and core_venv.needs_build() and core_venv.find_python():
        core_venv.start()
    # the smoke run shared with the other `make test` process (tests/smoke_run.py): started now, it overlaps the
    # first tests here, and the Docker stage gets it while its image builds
    if any("repro" in getattr(item, "fixturenames", ()) for item in session.items):
        smoke_run.start_in_background()
