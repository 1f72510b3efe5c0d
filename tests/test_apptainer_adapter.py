"""images.apptainer against the real Apptainer (tests/cluster/apptainer.sh), the only one
on PATH. Images are tiny SIFs built in the test from a static busybox, as a test user: root
cannot start containers on the test machine (its capability set is short of Apptainer's), and
nothing is pulled (pulls are tests/test_image_pull.py's, against the loopback registry)."""

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

from rxslurm.daemon.images import apptainer
from rxslurm.daemon.images.apptainer import ApptainerError
from rxslurm.daemon.images.cache import image_file_name
from rxslurm.slurm.runas import RunAs
from tests.support.cluster import run_as
from tests.support.real_apptainer import APPTAINER
from tests.support.registry import SMALL

needs_root = pytest.mark.root(reason="acting as a test user needs root")
BUSYBOX = Path("/bin/busybox")  # busybox-static: runs in an image with no libraries
BUILDER = "rxalice"


@pytest.fixture(autouse=True)
def real_apptainer_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # spython runs `singularity` from PATH and the adapter looks `apptainer` up there: both must
    # be the real one, whatever the caller's PATH holds. Not container_runtime here: the
    # Dockerfile conversion and argument checks need no Apptainer.
    monkeypatch.setenv("PATH", f"{Path(APPTAINER).parent}:/bin")
    monkeypatch.delenv("SPYTHON_SINGULARITY_VERSION", raising=False)


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder the test users can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="rx-adapter-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def build_folder(folder: Path, container_runtime: str) -> Path:
    """``folder`` owned by the user who builds and runs the test images."""
    builder = pwd.getpwnam(BUILDER)
    os.chown(folder, builder.pw_uid, builder.pw_gid)
    return folder


def as_builder(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_as(BUILDER, [APPTAINER, *argv], timeout=120, cwd=cwd)


def busybox_tree(folder: Path) -> Path:
    """A root filesystem of one static busybox and the applets the tests' scripts use."""
    tree = folder / "tree"
    script = (
        f"mkdir -p {tree}/bin {tree}/etc && cp {BUSYBOX} {tree}/bin/busybox"
        f" && for applet in sh echo; do ln -s busybox {tree}/bin/$applet; done"
    )
    made = run_as(BUILDER, ["/bin/sh", "-c", script])
    assert made.returncode == 0, made.stderr
    return tree


def build(folder: Path, name: str, definition: str, *options: str) -> Path:
    (folder / f"{name}.def").write_text(definition)
    image = folder / f"{name}.sif"
    built = as_builder("-s", "build", *options, str(image), str(folder / f"{name}.def"))
    assert built.returncode == 0, built.stderr
    return image


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


def test_without_apptainer_inspect_raises_apptainer_error(
    monkeypatch: pytest.MonkeyPatch, folder: Path
) -> None:
    monkeypatch.setenv("PATH", str(folder))
    with pytest.raises(ApptainerError, match="cannot run singularity"):
        apptainer.inspect(folder / "x.sif")


@needs_root
def test_pull_reuses_a_root_owned_cached_image_without_pulling(folder: Path) -> None:
    # Pulls themselves (as the pull account, with limits) are tests/test_image_pull.py's.
    cached = folder / image_file_name(SMALL)
    cached.write_bytes(b"cached")
    assert apptainer.pull(SMALL, folder) == cached
    assert cached.read_bytes() == b"cached"


@pytest.mark.parametrize(
    "uri", ["https://example.org/x.sif", "shub://a/b", "python:3.12", "docker://", "/abs/x.sif"]
)
def test_pull_accepts_only_docker_oras_and_library(folder: Path, uri: str) -> None:
    with pytest.raises(ApptainerError, match="only docker://, oras:// and library://"):
        apptainer.pull(uri, folder)
    assert list(folder.iterdir()) == []


@needs_root
def test_inspect_returns_the_labels(build_folder: Path) -> None:
    tree = busybox_tree(build_folder)
    definition = (
        f"Bootstrap: localimage\nFrom: {tree}\n\n%labels\n    Team science\n"
        "%runscript\n    echo hi\n"
    )
    attributes = apptainer.inspect(build(build_folder, "x", definition))
    assert attributes["labels"]["Team"] == "science"
    assert attributes["labels"]["org.label-schema.usage.singularity.deffile.from"] == str(tree)
    assert "echo hi" in attributes["runscript"]
    assert attributes["deffile"].startswith("Bootstrap: localimage")


@pytest.mark.usefixtures("container_runtime")
def test_inspect_of_a_missing_image_is_an_apptainer_error(folder: Path) -> None:
    with pytest.raises(ApptainerError, match="Failed to open image") as caught:
        apptainer.inspect(folder / "missing.sif")
    assert caught.value.returncode == 255


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


def from_local_image(definition: str, base: Path) -> str:
    """A converted definition bootstrapped from a local SIF instead of a registry (no network)."""
    header = definition.splitlines()[:2]
    assert header[0] == "Bootstrap: docker" and header[1].startswith("From: "), header
    rest = definition.split("\n", 2)[2]
    return f"Bootstrap: localimage\nFrom: {base}\n{rest}"


@needs_root
@pytest.mark.parametrize(
    ("dockerfile", "default", "replaced"),
    [
        ('FROM busybox\nCMD ["echo", "hello world"]\n', "hello world\n", "other\n"),
        (
            'FROM busybox\nENTRYPOINT ["echo", "ep"]\nCMD ["hello world"]\n',
            "ep hello world\n",
            "ep echo other\n",
        ),
    ],
    ids=["cmd", "entrypoint"],
)
def test_converted_runscript_behaves_like_docker_run(
    build_folder: Path, dockerfile: str, default: str, replaced: str
) -> None:
    tree = busybox_tree(build_folder)
    base = as_builder("-s", "build", str(build_folder / "base.sif"), str(tree))
    assert base.returncode == 0, base.stderr
    definition = from_local_image(
        apptainer.dockerfile_to_definition(dockerfile), build_folder / "base.sif"
    )
    image = build(build_folder, "app", definition, "--fakeroot")
    ran = as_builder("run", str(image), cwd=build_folder)
    assert (ran.returncode, ran.stdout) == (0, default), ran.stderr
    ran = as_builder("run", str(image), "echo", "other", cwd=build_folder)
    assert (ran.returncode, ran.stdout) == (0, replaced), ran.stderr
