"""Export and import on the real cluster with the real Apptainer: a package installed in one
project's container (under --fakeroot, into /opt) works in another project after `rxctl export`
and `rxctl import`; a workspace's symlinks to /etc/shadow and another user's home are never read;
hostile archives are refused through rxctl with the project unchanged; who may do which."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import ok, output, refused
from tests.support.cluster import run_as
from tests.support.daemon import Rxd
from tests.support.lifecycle import lifecycle_rxd, make_project, status, wait_state
from tests.unit.test_archive_rules import HOSTILE

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("container_runtime")]

SOURCE = "expsrc"
TARGET = "expdst"
OWNER = "rxalice"
MANAGER = "rxbob"
VIEWER = "rxdave"
INSTALL = (
    "mkdir -p /opt/rxpkg/bin && printf '#!/bin/sh\\necho rxpkg works\\n' > /opt/rxpkg/bin/rxpkg"
    " && chmod 755 /opt/rxpkg/bin/rxpkg"
)


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with lifecycle_rxd(bind=(OWNER, MANAGER, VIEWER)) as daemon:
        for project in (SOURCE, TARGET):
            make_project(daemon, project)
            for user, role in ((MANAGER, "manager"), (VIEWER, "viewer")):
                add = ("project", "member", "add", "--project", project, user, "--role", role)
                ok(daemon.rxctl(OWNER, *add))
        yield daemon


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A folder of the owner's where rxctl writes and reads archives."""
    folder = Path(output(run_as(OWNER, ["mktemp", "-d", "/tmp/rx-export-XXXXXX"])).strip())
    folder.chmod(0o755)  # others may read what is in it (the manager's import)
    yield folder
    run_as(OWNER, ["rm", "-rf", str(folder)])


def container_folder(rxd: Rxd, project: str) -> Path:
    ((state_dir,),) = rxd.ledger_rows(
        "SELECT c.state_dir FROM containers c JOIN projects p ON p.id = c.project_id "
        "WHERE p.name = ?",
        [project],
    )
    return Path(state_dir)


def workspace_of(rxd: Rxd, project: str) -> Path:
    ((workspace,),) = rxd.ledger_rows("SELECT workspace FROM projects WHERE name = ?", [project])
    return Path(workspace)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sleeping(rxd: Rxd, project: str) -> None:
    """The project's container enabled (it ran once: its overlay exists) and stopped."""
    state = status(rxd, OWNER, project)["state"]
    if state == "disabled":
        ok(rxd.rxctl(OWNER, "enable", "--project", project))
        wait_state(rxd, project, "running", timeout=180)
    if state != "stopped":
        ok(rxd.rxctl(OWNER, "stop", "--project", project))
        wait_state(rxd, project, "stopped")


def give(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def test_a_package_installed_in_one_project_works_in_another_after_export_and_import(
    rxd: Rxd, scratch: Path
) -> None:
    ok(rxd.rxctl(OWNER, "enable", "--project", SOURCE))
    wait_state(rxd, SOURCE, "running", timeout=180)
    ok(rxd.rxctl(OWNER, "exec", "--project", SOURCE, "--", "sh", "-c", INSTALL))
    workspace = workspace_of(rxd, SOURCE)
    links = [
        ["ln", "-s", "/etc/shadow", str(workspace / "shadow")],
        ["ln", "-s", f"/home/{MANAGER}", str(workspace / "bob-home")],
        ["sh", "-c", f"echo notes > {workspace}/notes.txt"],
    ]
    for argv in links:
        ok(run_as(OWNER, argv))
    ok(rxd.rxctl(OWNER, "stop", "--project", SOURCE))
    wait_state(rxd, SOURCE, "stopped")

    archive = scratch / "src.rx.tar.gz"
    said = output(
        rxd.rxctl(OWNER, "export", "--project", SOURCE, "-o", str(archive), "--workspace")
    )
    assert said.startswith(f"exported {SOURCE} to {archive} (")
    data = gzip.decompress(archive.read_bytes())
    shadow = Path("/etc/shadow").read_bytes()
    assert shadow not in data
    assert all(line not in data for line in shadow.splitlines() if b":$" in line)
    assert b"notes\n" in data
    # The same file again is refused, never overwritten.
    assert "exists" in refused(rxd.rxctl(OWNER, "export", "--project", SOURCE, "-o", str(archive)))

    sleeping(rxd, TARGET)
    folder = container_folder(rxd, TARGET)
    before = digest(folder / "overlay.img")
    imported = output(rxd.rxctl(OWNER, "import", "--project", TARGET, str(archive)))
    assert imported.startswith(f"imported {archive} into {TARGET}")
    assert digest(folder / "overlay.img.before-import") == before
    (unpacked,) = [p for p in workspace_of(rxd, TARGET).iterdir() if p.name.startswith("imported-")]
    assert (unpacked / "notes.txt").read_text() == "notes\n"
    # Kept private while unpacked, then the workspace's ACLs: the manager reads it too.
    assert output(run_as(MANAGER, ["cat", str(unpacked / "notes.txt")])) == "notes\n"
    assert not (unpacked / "shadow").exists() and not (unpacked / "bob-home").exists()
    ((detail,),) = rxd.ledger_rows(
        "SELECT detail FROM events WHERE action = 'project.import' AND target_id = ?", [TARGET]
    )
    event = json.loads(detail)
    assert event["backup"] == str(folder / "overlay.img.before-import")
    assert "garbage collection" in event["backup_note"]

    ok(rxd.rxctl(OWNER, "start", "--project", TARGET))
    wait_state(rxd, TARGET, "running", timeout=180)
    ran = rxd.rxctl(OWNER, "exec", "--project", TARGET, "--", "/opt/rxpkg/bin/rxpkg")
    assert output(ran) == "rxpkg works\n"
    # Awake: an import is refused in one line, and nothing changes.
    now = digest(folder / "overlay.img")
    line = refused(rxd.rxctl(OWNER, "import", "--project", TARGET, str(archive)))
    assert "is awake" in line and f"rxctl stop --project {TARGET}" in line
    assert digest(folder / "overlay.img") == now
    ok(rxd.rxctl(OWNER, "stop", "--project", TARGET))
    wait_state(rxd, TARGET, "stopped")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_archive_is_refused_through_rxctl_and_the_project_is_unchanged(
    rxd: Rxd, scratch: Path, case: str
) -> None:
    sleeping(rxd, TARGET)
    folder = container_folder(rxd, TARGET)
    workspace = workspace_of(rxd, TARGET)
    before = (digest(folder / "overlay.img"), os.listdir(folder), os.listdir(workspace))
    path = scratch / f"hostile-{case.replace(' ', '-')}.tar.gz"
    path.write_bytes(HOSTILE[case]())
    give(path, OWNER)
    line = refused(rxd.rxctl(OWNER, "import", "--project", TARGET, str(path)))
    assert "refused" in line and "nothing was changed" in line
    after = (digest(folder / "overlay.img"), os.listdir(folder), os.listdir(workspace))
    assert (after[0], sorted(after[1]), sorted(after[2])) == (
        before[0],
        sorted(before[1]),
        sorted(before[2]),
    )
    assert rxd.ledger_rows(
        "SELECT 1 FROM events WHERE action = 'project.import-refused' AND target_id = ?", [TARGET]
    )


def test_who_may_export_and_import(rxd: Rxd, scratch: Path) -> None:
    line = refused(rxd.rxctl(VIEWER, "export", "--project", SOURCE, "-o", "-"))
    assert "export" in line
    # A manager may export but not import.
    mine = Path(output(run_as(MANAGER, ["mktemp", "-d", "/tmp/rx-export-XXXXXX"])).strip())
    try:
        ok(rxd.rxctl(MANAGER, "export", "--project", SOURCE, "-o", str(mine / "a.tar.gz")))
        assert (mine / "a.tar.gz").stat().st_size > 0
    finally:
        run_as(MANAGER, ["rm", "-rf", str(mine)])
    archive = scratch / "src.rx.tar.gz"
    line = refused(rxd.rxctl(MANAGER, "import", "--project", TARGET, str(archive)))
    assert "import" in line
