"""Session hooks for the core-install test (tests/test_core_install.py, marker ``core_install``):
its fresh venv takes minutes to download and install, so the build starts in the background right
after collection, and the test runs last, by which time the CPU-bound tests have overlapped it."""

from __future__ import annotations

import pytest

import core_venv


def _core_items(items: list[pytest.Item]) -> list[pytest.Item]:
    return [item for item in items if item.get_closest_marker("core_install")]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    core = _core_items(items)
    if core:
        items[:] = [item for item in items if item not in core] + core


def pytest_collection_finish(session: pytest.Session) -> None:
    if _core_items(session.items) and core_venv.needs_build() and core_venv.find_python():
        core_venv.start()
