"""Project workspaces: exactly the right Linux identities may read and write them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import ok
from tests.support.cluster import run_as
from tests.support.daemon import Rxd, new_rxd, running_rxd

pytestmark = pytest.mark.cluster  # projects are validated against Slurm's partitions


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    users = ("rxalice", "rxbob", "rxcarol", "rxdave")
    with running_rxd('[runtime]\nservice_account = "rxsvc"\n', bind=users) as daemon:
        yield daemon


def can_write(user: str, folder: Path) -> bool:
    return run_as(user, ["sh", "-c", f"echo {user} > '{folder}/by-{user}'"]).returncode == 0


def can_read(user: str, folder: Path) -> bool:
    return run_as(user, ["ls", str(folder)]).returncode == 0


def workspace(rxd: Rxd, project: str) -> Path:
    shown = json.loads(
        ok(rxd.rxctl("rxalice", "project", "show", "--project", project, "--json")).stdout
    )
    return Path(shown["workspace"])


def test_members_get_access_by_role_and_others_none(rxd: Rxd) -> None:
    ok(rxd.rxctl("rxalice", "project", "create", "ws-roles"))
    ok(
        rxd.rxctl(
            "rxalice",
            "project",
            "member",
            "add",
            "--project",
            "ws-roles",
            "rxbob",
            "--role",
            "editor",
        )
    )
    ok(
        rxd.rxctl(
            "rxalice",
            "project",
            "member",
            "add",
            "--project",
            "ws-roles",
            "rxcarol",
            "--role",
            "viewer",
        )
    )
    folder = workspace(rxd, "ws-roles")
    # Service-account mode (the deployment has one): the folder belongs to it, not to root.
    assert folder.stat().st_uid == 2100 and oct(folder.stat().st_mode & 0o777) == "0o770"
    assert can_write("rxalice", folder) and can_write("rxbob", folder)
    assert can_read("rxcarol", folder) and not can_write("rxcarol", folder)
    assert not can_read("rxdave", folder) and not can_write("rxdave", folder)
    # Files made inside inherit the grants (default ACLs): the editor can change the owner's file.
    assert run_as("rxbob", ["sh", "-c", f"echo edit >> '{folder}/by-rxalice'"]).returncode == 0


def test_a_removed_member_loses_access(rxd: Rxd) -> None:
    ok(rxd.rxctl("rxalice", "project", "create", "ws-revoke"))
    ok(
        rxd.rxctl(
            "rxalice",
            "project",
            "member",
            "add",
            "--project",
            "ws-revoke",
            "rxbob",
            "--role",
            "manager",
        )
    )
    folder = workspace(rxd, "ws-revoke")
    assert can_write("rxbob", folder)
    ok(rxd.rxctl("rxalice", "project", "member", "rm", "--project", "ws-revoke", "rxbob"))
    assert not can_read("rxbob", folder)


def test_switching_run_as_prepares_the_folder_again(rxd: Rxd) -> None:
    ok(rxd.rxctl("rxalice", "project", "create", "ws-mode"))
    folder = workspace(rxd, "ws-mode")
    assert can_write("rxsvc", folder)
    shown = json.loads(
        ok(
            rxd.rxctl("rxalice", "project", "run-as", "--project", "ws-mode", "bound", "--json")
        ).stdout
    )
    assert shown["runtime_user"] == "rxalice"
    # The owner's identity now runs the work and owns the folder; the service account, which
    # every service project runs as, keeps nothing (not even a default entry).
    assert folder.stat().st_uid == 2001
    assert can_write("rxalice", folder) and not can_read("rxsvc", folder)
    acl = subprocess.run(["getfacl", "-cpn", str(folder)], capture_output=True, text=True).stdout
    assert ":2100:" not in acl


def test_rxd_refuses_a_workspace_root_others_can_write() -> None:
    daemon = new_rxd(lambda root: f'[workspaces]\nroot = "{root}/open"\n')
    open_root = daemon.root / "open"
    open_root.mkdir(mode=0o777)
    open_root.chmod(0o777)
    daemon.start()
    try:
        result = daemon.rxctl("rxalice", "project", "create", "ws-open")
        assert result.returncode == 1
        assert "must be owned by root and not group/world writable" in result.stderr
        assert (
            daemon.rxctl("rxalice", "project", "show", "--project", "ws-open").returncode == 1
        )  # rolled back
        assert list(open_root.iterdir()) == []
    finally:
        daemon.stop()
