"""What rx-slurm relies on, checked against a real Apptainer wherever one is installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rxslurm.daemon import apptainer
from rxslurm.slurm.runas import RunAs
from tests.support.daemon import test_root
from tests.support.real_apptainer import real_apptainer

pytestmark = pytest.mark.apptainer


def test_the_version_is_read_through_spython() -> None:
    version = apptainer.apptainer_version()
    assert version is not None and version[0].isdigit()


def test_both_names_answer_alike() -> None:
    binary = real_apptainer()
    assert binary is not None
    outputs = [
        subprocess.run([name, "--version"], capture_output=True, text=True).stdout.split()[-1]
        for name in (binary, "singularity")
    ]
    assert outputs[0] == outputs[1]


def test_a_user_makes_their_own_overlay() -> None:
    folder = test_root() / "overlay"
    folder.mkdir()
    os.chown(folder, 2001, 2001)
    overlay = folder / "overlay.img"
    apptainer.create_overlay(overlay, 64, RunAs.for_user("rxalice"))
    assert overlay.stat().st_uid == 2001 and overlay.stat().st_size > 0


def test_an_unknown_flag_is_a_usage_error() -> None:
    result = subprocess.run(
        ["apptainer", "exec", "--no-such-flag", "/nonexistent.sif", "true"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "no-such-flag" in result.stderr


def test_inspect_of_a_missing_image_is_an_apptainer_error(tmp_path: Path) -> None:
    with pytest.raises(apptainer.ApptainerError):
        apptainer.inspect(tmp_path / "missing.sif")
