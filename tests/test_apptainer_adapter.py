"""rxslurm.daemon.apptainer against the Apptainer stand-in (tests/standin) put first on PATH."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rxslurm.daemon import apptainer
from rxslurm.daemon.apptainer import ApptainerError
from rxslurm.daemon.image_cache import image_file_name
from rxslurm.slurm.runas import RunAs

STANDIN = Path(__file__).resolve().parent / "standin"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as a test user needs root")


@pytest.fixture(autouse=True)
def standin_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{STANDIN}:/usr/bin:/bin")
    monkeypatch.delenv("SPYTHON_SINGULARITY_VERSION", raising=False)


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder the test users can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="rx-adapter-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def standin(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STANDIN / "apptainer"), *argv], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_version_is_the_number(monkeypatch: pytest.MonkeyPatch) -> None:
    assert apptainer.apptainer_version() == "1.3.4"
    # spython would report this variable instead of asking the binary; the adapter must not
    monkeypatch.setenv("SPYTHON_SINGULARITY_VERSION", "9.9.9")
    assert apptainer.apptainer_version() == "1.3.4"


def test_version_is_none_without_apptainer(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv("PATH", str(folder))
    assert apptainer.apptainer_version() is None


def test_without_apptainer_inspect_raises_apptainer_error(
    monkeypatch: pytest.MonkeyPatch, folder: Path
) -> None:
    monkeypatch.setenv("PATH", str(folder))
    with pytest.raises(ApptainerError, match="cannot run singularity"):
        apptainer.inspect(folder / "x.sif")


@needs_root
def test_pull_reuses_a_root_owned_cached_image_without_pulling(folder: Path) -> None:
    # Pulls themselves (as the pull account, with limits) are tests/test_image_pull.py's.
    cached = folder / image_file_name("docker://python:3.12-slim")
    cached.write_bytes(b"cached")
    assert apptainer.pull("docker://python:3.12-slim", folder) == cached
    assert cached.read_bytes() == b"cached"


@pytest.mark.parametrize(
    "uri", ["https://example.org/x.sif", "shub://a/b", "python:3.12", "docker://", "/abs/x.sif"]
)
def test_pull_accepts_only_docker_oras_and_library(folder: Path, uri: str) -> None:
    with pytest.raises(ApptainerError, match="only docker://, oras:// and library://"):
        apptainer.pull(uri, folder)
    assert list(folder.iterdir()) == []


def test_inspect_returns_the_labels(folder: Path) -> None:
    (folder / "x.def").write_text(
        "Bootstrap: docker\nFrom: alpine:3.19\n\n%labels\n    Team science\n"
        "%runscript\n    echo hi\n"
    )
    assert standin("build", str(folder / "x.sif"), str(folder / "x.def")).returncode == 0
    attributes = apptainer.inspect(folder / "x.sif")
    assert attributes["labels"]["Team"] == "science"
    assert attributes["labels"]["org.label-schema.usage.singularity.deffile.from"] == "alpine:3.19"
    assert "echo hi" in attributes["runscript"]


def test_inspect_of_a_missing_image_is_an_apptainer_error(folder: Path) -> None:
    with pytest.raises(ApptainerError, match="could not open image"):
        apptainer.inspect(folder / "missing.sif")


@needs_root
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


def sections(definition: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"header": []}
    current = "header"
    for line in definition.splitlines():
        if line.startswith("%"):
            current = line[1:]
            found[current] = []
        elif line.strip():
            found[current].append(line)
    return found


def test_cmd_without_entrypoint_is_not_run_through_bash() -> None:
    text = 'FROM python:3.12-slim\nWORKDIR /app\nCMD ["python", "app.py", "--name", "a b"]\n'
    parts = sections(apptainer.dockerfile_to_definition(text))
    assert parts["header"][:2] == ["Bootstrap: docker", "From: python:3.12-slim"]
    assert parts["runscript"] == [
        "cd /app",
        'if [ "$#" -gt 0 ]; then exec "$@"; fi',
        "exec python app.py --name 'a b'",
    ]
    assert "startscript" not in parts


def test_entrypoint_gets_the_arguments_and_cmd_is_the_default() -> None:
    parts = sections(
        apptainer.dockerfile_to_definition(
            'FROM ubuntu AS base\nENTRYPOINT ["tini", "--"]\nCMD ["bash"]\n'
        )
    )
    assert parts["header"][1] == "From: ubuntu"  # spython leaves a trailing space
    assert parts["runscript"] == [
        'if [ "$#" -gt 0 ]; then exec tini -- "$@"; fi',
        "exec tini -- bash",
    ]


def test_shell_forms_and_no_command() -> None:
    parts = sections(apptainer.dockerfile_to_definition("FROM alpine\nCMD echo $HOME\n"))
    assert parts["runscript"][-1] == "exec /bin/sh -c 'echo $HOME'"
    parts = sections(apptainer.dockerfile_to_definition("FROM alpine\nRUN apk add git\n"))
    assert "runscript" not in parts  # the base image's runscript stays in force
    assert parts["post"] == ["apk add git"]


def test_docker_labels_become_key_value_lines() -> None:
    parts = sections(
        apptainer.dockerfile_to_definition('FROM alpine\nLABEL maintainer="Ada L" version=2\n')
    )
    assert parts["labels"] == ["maintainer Ada L", "version 2"]


def test_a_dockerfile_without_from_is_an_apptainer_error() -> None:
    with pytest.raises(ApptainerError, match="FROM"):
        apptainer.dockerfile_to_definition("RUN echo hi\n")


def test_converted_runscript_behaves_like_docker_run(folder: Path) -> None:
    definition = apptainer.dockerfile_to_definition('FROM alpine\nCMD ["echo", "hello world"]\n')
    (folder / "app.def").write_text(definition)
    assert standin("build", str(folder / "app.sif"), str(folder / "app.def")).returncode == 0
    default = standin("run", str(folder / "app.sif"), cwd=folder)
    assert (default.returncode, default.stdout) == (0, "hello world\n")
    replaced = standin("run", str(folder / "app.sif"), "echo", "other", cwd=folder)
    assert replaced.stdout == "other\n"
