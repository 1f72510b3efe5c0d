"""Golden files: text a test pins byte for byte, regenerated on purpose, never by accident."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REGEN_ENV = "RXSLURM_REGEN_GOLDEN"


def assert_golden(golden: Path, text: str, test_file: str) -> None:
    """``text`` is exactly ``golden``'s content; with RXSLURM_REGEN_GOLDEN=1 the file is
    rewritten instead (and the test skipped, so a regenerating run never passes silently)."""
    if os.environ.get(REGEN_ENV) == "1":
        golden.write_text(text, encoding="utf-8")
        pytest.skip(f"regenerated {golden}")
    expected = golden.read_text(encoding="utf-8")
    assert text == expected, (
        f"the output differs from {golden.name}. If the change is intended, regenerate it with "
        f"`{REGEN_ENV}=1 .venv/bin/pytest {test_file}` and review `git diff` before committing."
    )
