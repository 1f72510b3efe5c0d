"""The Apptainer adapter (daemon/runtime/apptainer.py) against the real Apptainer
(tests/cluster/apptainer.sh), the only one on PATH. Nothing is pulled (pulls are
tests/test_image_pull.py's, against the loopback registry)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rxslurm.daemon.images import pull as image_pull
from rxslurm.daemon.images.cache import image_file_name
from rxslurm.daemon.runtime import apptainer
from rxslurm.daemon.runtime.apptainer import ApptainerError
from rxslurm.slurm.runas import RunAs
from tests.support.real_apptainer import APPTAINER
from tests.support.registry import SMALL

needs_root = pytest.mark.root(reason="acting as a test user needs root")


@pytest.fixture(autouse=True)
def real_apptainer_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The adapter looks `apptainer` up on PATH: it must be the real one, whatever the caller's
    # PATH holds. Not container_runtime here: the argument checks need no Apptainer.
    monkeypatch.setenv("PATH", f"{Path(APPTAINER).parent}:/bin")
    monkeypatch.delenv("SPYTHON_SINGULARITY_VERSION", raising=False)


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder the test users can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="rx-adapter-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.usefixtures("container_runtime")
def test_version_is_the_number(monkeypatch: pytest.MonkeyPatch) -> None:
    said = subprocess.run([APPTAINER, "--version"], capture_output=True, text=True, check=True)
    version = apptainer.apptainer_version()
    assert version is not None and re.fullmatch(r"\d+\.\d+\.\d+\S*", version), version
    assert said.stdout.strip() == f"apptainer version {version}"
    assert tuple(int(part) for part in version.split(".")[:2]) >= (1, 4)
    # spython would report this variable instead of asking the binary; the adapter must not
    monkeypatch.setenv("SPYTHON_SINGULARITY_VERSION", "9.9.9")
    assert apptainer.apptainer_version() == version


def test_version_is_none_without_apptainer(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv("PATH", str(folder))
    assert apptainer.apptainer_version() is None


@needs_root
def test_pull_reuses_a_root_owned_cached_image_without_pulling(folder: Path) -> None:
    # Pulls themselves (as the pull account, with limits) are tests/test_image_pull.py's.
    cached = folder / image_file_name(SMALL)
    cached.write_bytes(b"cached")
    assert image_pull.pull_into(SMALL, folder) == cached
    assert cached.read_bytes() == b"cached"


@pytest.mark.parametrize(
    "uri", ["https://example.org/x.sif", "shub://a/b", "python:3.12", "docker://", "/abs/x.sif"]
)
def test_pull_accepts_only_docker_oras_and_library(folder: Path, uri: str) -> None:
    with pytest.raises(ApptainerError, match="only docker://, oras:// and library://"):
        image_pull.pull_into(uri, folder)
    assert list(folder.iterdir()) == []


@needs_root
@pytest.mark.usefixtures("container_runtime")
def test_create_overlay_runs_as_the_runtime_user(folder: Path) -> None:
    alice = RunAs.for_user("rxalice")
    state = folder / "state"
    state.mkdir(mode=0o700)
    os.chown(state, alice.uid, alice.gid)
    overlay = state / "overlay.img"
    apptainer.create_overlay(overlay, 64, alice)
    assert overlay.stat().st_uid == alice.uid
    assert overlay.stat().st_size == 64 * 1024 * 1024
    with pytest.raises(ApptainerError, match="already exists"):
        apptainer.create_overlay(overlay, 64, alice)


@needs_root
@pytest.mark.usefixtures("container_runtime")
def test_create_overlay_has_only_the_users_rights(folder: Path) -> None:
    # root may write here, alice may not: failing proves the command did not run as root
    with pytest.raises(ApptainerError) as caught:
        apptainer.create_overlay(folder / "overlay.img", 64, RunAs.for_user("rxalice"))
    assert caught.value.returncode == 255
    assert not (folder / "overlay.img").exists()
    assert pwd.getpwuid(folder.stat().st_uid).pw_name == "root"


def test_create_overlay_checks_its_arguments() -> None:
    alice = RunAs("rxalice", 2001, 2001, (2001,))
    with pytest.raises(ValueError, match="absolute"):
        apptainer.create_overlay("relative.img", 64, alice)
    with pytest.raises(ApptainerError, match="at least 64"):
        apptainer.create_overlay("/tmp/x.img", 10, alice)
