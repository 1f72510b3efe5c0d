"""What a researcher gets inside a container on the real Apptainer, end to end through rxd: what
they install with the container's own package managers survives stop and start, and how contained
the container is under each `[apptainer]` setting."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import ok
from tests.support.cluster import run_as
from tests.support.daemon import Rxd
from tests.support.lifecycle import lifecycle_rxd, make_project, status, wait_state
from tests.support.real_apptainer import APPTAINER

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

# Jobs are Slurm singletons named rx-<project>: these names are this module's own.
INSTALL = "rt-install"
CONTAINED = "rt-contained"
PLAIN = "rt-plain"


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with lifecycle_rxd() as daemon:
        yield daemon
        stop_all(daemon, INSTALL, CONTAINED)


@pytest.fixture(scope="module")
def plain_rxd() -> Iterator[Rxd]:
    """A deployment that turned containment off: no --fakeroot, the host's home and /tmp."""
    plain = (
        f'[apptainer]\nbinary = "{APPTAINER}"\nfakeroot = false\nhome = "host"\n'
        "private_tmp = false\n"
    )
    with lifecycle_rxd(plain) as daemon:
        yield daemon
        stop_all(daemon, PLAIN)


def stop_all(daemon: Rxd, *projects: str) -> None:
    """Stop the module's containers and wait for them to rest, before rxd is shut down."""
    for project in projects:
        daemon.rxctl("rxalice", "stop", "--project", project)
    for project in projects:
        wait_state(daemon, project, "stopped", "disabled", "error", timeout=60)


def running(rxd: Rxd, project: str) -> dict:
    if rxd.rxctl("rxalice", "status", "--project", project, "--json").returncode != 0:
        make_project(rxd, project)
        ok(rxd.rxctl("rxalice", "enable", "--project", project))
    return wait_state(rxd, project, "running", timeout=180)


def restart(rxd: Rxd, project: str) -> None:
    ok(rxd.rxctl("rxalice", "stop", "--project", project))
    wait_state(rxd, project, "stopped")
    ok(rxd.rxctl("rxalice", "start", "--project", project))
    wait_state(rxd, project, "running", timeout=180)


def in_container(rxd: Rxd, project: str, script: str) -> subprocess.CompletedProcess[str]:
    return rxd.rxctl("rxalice", "exec", "--project", project, "--", "sh", "-c", script)


def build_deb(workspace: Path) -> str:
    """A local .deb (dpkg-deb, as the researcher) that installs /usr/local/bin/rx-hello."""
    tree = workspace / "pkg"
    ok(run_as("rxalice", ["mkdir", "-p", f"{tree}/DEBIAN", f"{tree}/usr/local/bin"]))
    control = (
        "Package: rx-hello\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: rx-slurm tests <tests@localhost>\nDescription: a local test package\n"
    )
    ok(run_as("rxalice", ["tee", f"{tree}/DEBIAN/control"], input=control))
    tool = f"{tree}/usr/local/bin/rx-hello"
    ok(run_as("rxalice", ["tee", tool], input="#!/bin/sh\necho hello from rx-hello\n"))
    # The workspace's default ACL makes new folders 0770; dpkg-deb wants a 0755 control folder.
    ok(run_as("rxalice", ["chmod", "755", tool, f"{tree}/DEBIAN"]))
    deb = workspace / "rx-hello_1.0_all.deb"
    ok(run_as("rxalice", ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)]))
    return deb.name


def build_wheel(workspace: Path) -> str:
    """A local pure-Python wheel (written by hand: a zip with METADATA, WHEEL and RECORD)."""
    name = "rxwheel-1.0-py3-none-any.whl"
    files = {
        "rxwheel/__init__.py": b"VALUE = 'from the wheel'\n",
        "rxwheel-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: rxwheel\nVersion: 1.0\n",
        "rxwheel-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: rx-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [
        f"{path},sha256="
        f"{base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
        f"{len(data)}"
        for path, data in files.items()
    ]
    files["rxwheel-1.0.dist-info/RECORD"] = (
        "\n".join([*record, "rxwheel-1.0.dist-info/RECORD,,"]) + "\n"
    ).encode()
    staged = workspace.parent / name
    with zipfile.ZipFile(staged, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    # Into the workspace as the researcher: root does not write into users' folders.
    staged.chmod(0o644)
    ok(run_as("rxalice", ["cp", str(staged), str(workspace / name)]))
    staged.unlink()
    return name


def test_a_package_and_a_wheel_installed_in_the_container_survive_stop_and_start(
    rxd: Rxd,
) -> None:
    project = running(rxd, INSTALL)
    workspace = Path(project["workspace"])
    deb, wheel = build_deb(workspace), build_wheel(workspace)
    # The container's own package managers, no network: apt-get with a local .deb, pip a wheel.
    installed = in_container(
        rxd,
        INSTALL,
        f"apt-get install -y ./{deb} && "
        f"pip install --break-system-packages --no-index ./{wheel} && rx-hello",
    )
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.endswith("hello from rx-hello\n")
    restart(rxd, INSTALL)
    check = (
        "rx-hello; dpkg-query -W -f '${Status}\\n' rx-hello; "
        "python3 -c 'import rxwheel; print(rxwheel.VALUE)'"
    )
    kept = ok(in_container(rxd, INSTALL, check))
    assert kept.stdout == "hello from rx-hello\ninstall ok installed\nfrom the wheel\n"
    # It lives in the container's overlay, not on the node.
    assert not Path("/usr/local/bin/rx-hello").exists()
    # What the container wrote in the workspace (dpkg, pip) is the runtime user's on the host.
    ok(in_container(rxd, INSTALL, "echo result > /workspace/result.txt"))
    assert (workspace / "result.txt").stat().st_uid == 2001


def test_a_container_has_its_own_home_and_tmp(rxd: Rxd) -> None:
    running(rxd, CONTAINED)
    host_tmp = Path("/tmp") / f"rx-host-only-{rxd.root.name}"
    host_tmp.write_text("the node's /tmp\n")
    try:
        seen = ok(
            in_container(
                rxd,
                CONTAINED,
                f'echo "$HOME"; test -e {host_tmp} && echo host-tmp; test -e /home/rxalice && '
                "echo host-home; echo mine > ~/in-home; echo t > /tmp/in-tmp",
            )
        )
    finally:
        host_tmp.unlink()
    # Root's home inside is the project's own folder (beside its overlay), not the node's home.
    assert seen.stdout == "/root\n"
    state_dir = Path(rxd.root) / "containers" / f"rx-{CONTAINED}"
    home_file = state_dir / "home" / "in-home"
    assert home_file.read_text() == "mine\n" and home_file.stat().st_uid == 2001
    # Its /tmp is its own (in the overlay): kept across a restart, never on the node.
    assert not Path("/tmp/in-tmp").exists()
    restart(rxd, CONTAINED)
    assert ok(in_container(rxd, CONTAINED, "cat /tmp/in-tmp ~/in-home")).stdout == "t\nmine\n"
    assert status(rxd, "rxalice", CONTAINED)["state"] == "running"


def test_without_containment_the_user_is_themself_and_sees_the_nodes_home_and_tmp(
    plain_rxd: Rxd,
) -> None:
    running(plain_rxd, PLAIN)
    marker = Path("/tmp") / f"rx-plain-{plain_rxd.root.name}"
    marker.write_text("node\n")
    try:
        seen = in_container(
            plain_rxd,
            PLAIN,
            f'id -u; echo "$HOME"; cat {marker}; mkdir /opt/x 2>/dev/null || echo opt-refused',
        )
    finally:
        marker.unlink()
    assert ok(seen).stdout == "2001\n/home/rxalice\nnode\nopt-refused\n"
