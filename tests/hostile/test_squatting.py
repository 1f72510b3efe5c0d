"""Finding 3: a deleted project's folders are never handed to the next project of that name.

Before the fix, rxbob could create and delete `thesis`, keep owning `<root>/thesis`, and rxd then
ran `setfacl` as rxbob for rxalice's `thesis`, adding `default:user:rxbob:rwx`: he read all she
wrote, even under umask 077, and could lock her out with `setfacl -b`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.helpers import (
    IMAGE,
    container_daemon,
    named_entries_for,
    sh,
    uid,
    wait_state,
    workspace_of,
)
from tests.support.cli import ok
from tests.support.cluster import run_as
from tests.support.daemon import Rxd

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def rxd() -> Iterator[Rxd]:
    with container_daemon() as daemon:
        yield daemon


def quarantined(rxd: Rxd, root: str, project: str) -> list[Path]:
    folder = rxd.root / root / ".quarantine"
    return sorted(folder.glob(f"{project}.*")) if folder.is_dir() else []


def audit_detail(rxd: Rxd, action: str, project: str) -> str:
    rows = rxd.ledger_rows(
        "SELECT detail FROM events WHERE action = ? AND target_id = ?", [action, project]
    )
    return " ".join(r[0] for r in rows)


def assert_locked_away(entry: Path) -> None:
    info = entry.lstat()
    assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o700
    parent = entry.parent.lstat()
    assert parent.st_uid == 0 and stat.S_IMODE(parent.st_mode) == 0o700


def test_a_squatter_reads_nothing_of_the_next_project_of_that_name(rxd: Rxd) -> None:
    ok(rxd.rxctl("rxbob", "project", "create", "thesis"))
    squat = workspace_of(rxd, "rxbob", "thesis")
    ok(sh("rxbob", f"echo planted > {squat}/from-bob"))
    ok(rxd.rxctl("rxbob", "project", "delete", "--project", "thesis", "--yes"))

    ok(rxd.rxctl("rxalice", "project", "create", "thesis"))
    folder = workspace_of(rxd, "rxalice", "thesis")
    assert folder == squat
    assert folder.stat().st_uid == uid("rxalice")
    assert os.listdir(folder) == []  # bob's folder (and his file) did not come back
    ok(
        sh(
            "rxalice",
            f"umask 077; mkdir {folder}/private && echo s3cret > {folder}/private/key "
            f"&& echo notes > {folder}/notes",
        )
    )
    for target in (folder, folder / "private"):
        assert run_as("rxbob", ["ls", str(target)]).returncode != 0
    for target in (folder / "private" / "key", folder / "notes"):
        assert run_as("rxbob", ["cat", str(target)]).returncode != 0
    assert run_as("rxbob", ["setfacl", "-m", "u:rxbob:rwx", str(folder)]).returncode != 0
    assert run_as("rxbob", ["setfacl", "-b", str(folder)]).returncode != 0
    # Not even a default entry that new files would inherit.
    assert named_entries_for(folder, "rxbob") == []
    assert ok(run_as("rxalice", ["cat", str(folder / "private" / "key")])).stdout == "s3cret\n"
    # Bob's old folder is kept for an admin, out of everyone's reach.
    (old,) = quarantined(rxd, "workspaces", "thesis")
    assert_locked_away(old)
    assert run_as("rxbob", ["cat", str(old / "from-bob")]).returncode != 0


def test_a_recreated_name_exposes_none_of_the_old_files(rxd: Rxd) -> None:
    ok(rxd.rxctl("rxalice", "project", "create", "paper"))
    ok(
        rxd.rxctl(
            "rxalice",
            "project",
            "member",
            "add",
            "--project",
            "paper",
            "rxcarol",
            "--role",
            "editor",
        )
    )
    folder = workspace_of(rxd, "rxalice", "paper")
    ok(sh("rxalice", f"mkdir {folder}/data && echo v1 > {folder}/data/results.csv"))
    ok(rxd.rxctl("rxalice", "project", "delete", "--project", "paper", "--yes"))

    ok(rxd.rxctl("rxbob", "project", "create", "paper"))
    assert workspace_of(rxd, "rxbob", "paper") == folder
    assert folder.stat().st_uid == uid("rxbob")
    assert os.listdir(folder) == []
    (old,) = quarantined(rxd, "workspaces", "paper")
    assert_locked_away(old)
    assert str(old) in audit_detail(rxd, "project.folders-quarantined", "paper")
    for user in ("rxbob", "rxcarol"):
        assert run_as(user, ["cat", str(old / "data" / "results.csv")]).returncode != 0
    # The old members' default entries do not follow the name: bob's new files grant them nothing.
    ok(sh("rxbob", f"mkdir {folder}/mine && echo b > {folder}/mine/f"))
    assert named_entries_for(folder, "rxcarol") == []
    assert named_entries_for(folder, "rxalice") == []


def test_a_leftover_folder_is_moved_to_quarantine_not_adopted(rxd: Rxd) -> None:
    # What an older rx-slurm, or a crash between deleting the records and moving the folder,
    # leaves behind: a folder at the project's path owned by someone else.
    leftover = rxd.root / "workspaces" / "left"
    leftover.mkdir(mode=0o700)
    os.chown(leftover, uid("rxbob"), uid("rxbob"))
    ok(sh("rxbob", f"setfacl -m d:u:rxbob:rwx {leftover} && echo x > {leftover}/trap"))
    ok(rxd.rxctl("rxalice", "project", "create", "left"))
    assert leftover.stat().st_uid == uid("rxalice")
    assert os.listdir(leftover) == [] and named_entries_for(leftover, "rxbob") == []
    (old,) = quarantined(rxd, "workspaces", "left")
    assert_locked_away(old)


def test_an_existing_project_refuses_a_folder_nobody_gave_it(rxd: Rxd) -> None:
    ok(rxd.rxctl("rxalice", "project", "create", "swap"))
    folder = workspace_of(rxd, "rxalice", "swap")
    # Only root can do this (the workspaces root is root's): an admin's mistake, say.
    os.chown(folder, uid("rxbob"), uid("rxbob"))
    result = ok(
        rxd.rxctl(
            "rxalice",
            "project",
            "member",
            "add",
            "--project",
            "swap",
            "rxcarol",
            "--role",
            "editor",
        )
    )
    assert "which rx-slurm never gave it to" in result.stderr + result.stdout
    # Nothing ran as bob: the folder's ACL is what it was.
    assert named_entries_for(folder, "rxcarol") == []


def test_a_deleted_projects_container_folder_neither_blocks_nor_leaks(rxd: Rxd) -> None:
    ok(rxd.rxctl("rxbob", "project", "create", "squat", "--image", IMAGE))
    ok(rxd.rxctl("rxbob", "enable", "--project", "squat"))
    wait_state(rxd, "rxbob", "squat", "running")
    state_dir = rxd.root / "containers" / "rx-squat"
    ok(sh("rxbob", f"echo bob > {state_dir}/bobs-note"))
    ok(rxd.rxctl("rxbob", "disable", "--project", "squat"))
    ok(rxd.rxctl("rxbob", "project", "delete", "--project", "squat", "--yes"))
    (old,) = quarantined(rxd, "containers", "rx-squat")
    assert_locked_away(old)

    ok(rxd.rxctl("rxalice", "project", "create", "squat", "--image", IMAGE))
    ok(rxd.rxctl("rxalice", "enable", "--project", "squat"))
    assert wait_state(rxd, "rxalice", "squat", "running")["runtime_user"] == "rxalice"
    assert state_dir.stat().st_uid == uid("rxalice")
    assert not (state_dir / "bobs-note").exists()
    assert run_as("rxbob", ["ls", str(state_dir)]).returncode != 0
    ok(rxd.rxctl("rxalice", "disable", "--project", "squat"))
