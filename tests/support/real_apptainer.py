"""Tests marked `apptainer` need a real Apptainer: skipped where only the stand-in is on PATH."""

from __future__ import annotations

import os
import shutil

import pytest

STANDIN_MARK = "/tests/standin/"


def real_apptainer() -> str | None:
    """The real apptainer binary on PATH, or None (absent, or our stand-in)."""
    found = shutil.which("apptainer")
    if found is None or STANDIN_MARK in os.path.realpath(found):
        return None
    return found


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if real_apptainer() is not None:
        return
    skip = pytest.mark.skip(reason="needs a real apptainer; only the tests' stand-in is installed")
    for item in items:
        if item.get_closest_marker("apptainer"):
            item.add_marker(skip)
