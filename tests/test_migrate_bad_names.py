"""m006: projects an older rxd stored under a name the API no longer accepts become reachable.

Before names were matched in full, `{"name": "x\\n"}` created a project; afterwards every route
refused that name, so its owners and admins could neither see, stop nor delete it, and its
container could keep a quota lease. The migration renames it (and what refers to it by name) and
audits the rename. Fast tests on a throwaway ledger: no root, no Slurm.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.store import Ledger, LedgerDatabase
from rxslurm.daemon.projects import service as projects
from rxslurm.daemon.projects.names import check_project_name
from rxslurm.daemon.projects.roles import Action

M006 = "m006_rename_unreachable_projects"
NOW = "2026-01-01T00:00:00.000000Z"
ALICE = Actor(platform_user="alice", uid=2001, user="rxalice", admin=False, origin="socket")


def add_project(
    db: LedgerDatabase, name: str, *, container_state: str | None = None, lease: bool = False
) -> int:
    project_id = (
        db["projects"]
        .insert(
            {"name": name, "created_at": NOW, "created_by": "alice", "workspace": f"/ws/{name}"}
        )
        .last_pk
    )
    db["members"].insert(
        {
            "project_id": project_id,
            "platform_user_id": "alice",
            "role": "owner",
            "added_at": NOW,
            "added_by": "alice",
        }
    )
    if container_state is not None:
        container_id = (
            db["containers"]
            .insert(
                {
                    "project_id": project_id,
                    "name": f"rx-{name}",
                    "state": container_state,
                    "runtime_user": "rxalice",
                    "state_dir": f"/state/rx-{name}",
                    "created_at": NOW,
                    "updated_at": NOW,
                }
            )
            .last_pk
        )
        if lease:
            db["leases"].insert(
                {
                    "container_id": container_id,
                    "partition": "gpu",
                    "project": name,
                    "linux_user": "rxalice",
                    "gpus": 2,
                    "cpus": 1,
                    "mem_mb": 0,
                    "acquired_at": NOW,
                }
            )
    return project_id


def old_ledger(path: Path, seed: Callable[[LedgerDatabase], Any]) -> Ledger:
    """A ledger at m005 holding what `seed` wrote, then migrated."""
    with Ledger.open(path, migrate=True) as ledger, ledger.transaction() as db:
        db.execute("DELETE FROM _sqlite_migrations WHERE name = ?", [M006])
        db["platform_users"].insert({"id": "alice", "created_at": NOW})
        seed(db)
    return Ledger.open(path, migrate=True)


def renames(ledger: Ledger) -> list[dict[str, Any]]:
    rows = ledger.db["events"].rows_where("action = 'project.renamed'", order_by="id")
    return [{**r, "detail": json.loads(r["detail"])} for r in rows]


def test_a_newline_name_is_renamed_with_its_container_lease_and_quota(tmp_path: Path) -> None:
    def seed(db: LedgerDatabase) -> None:
        add_project(db, "alpha", container_state="stopped")
        add_project(db, "x\n", container_state="starting", lease=True)
        db["quotas"].insert(
            {
                "partition": "gpu",
                "scope": "project",
                "subject": "x\n",
                "max_gpus": 2,
                "created_at": NOW,
                "created_by": "rxop",
            }
        )

    with old_ledger(tmp_path / "ledger.db", seed) as ledger:
        assert ledger.last_applied == [M006]
        db = ledger.db
        names = [r["name"] for r in db["projects"].rows_where(order_by="id")]
        assert names == ["alpha", "renamed-2"]
        assert [r["name"] for r in db["containers"].rows_where(order_by="id")] == [
            "rx-alpha",
            "rx-renamed-2",
        ]
        assert [r["project"] for r in db["leases"].rows] == ["renamed-2"]
        assert [r["subject"] for r in db["quotas"].rows] == ["renamed-2"]
        project = db["projects"].get(2)
        assert project["workspace"] == "/ws/renamed-2"
        # The old folder stays where it was (a migration moves no files); the event names it.
        [event] = renames(ledger)
        assert (event["actor"], event["origin"], event["target_id"]) == (
            "rxd",
            "migration",
            "renamed-2",
        )
        assert event["detail"]["from"] == "x\n"
        assert event["detail"]["old_workspace"] == "/ws/x\n"
        assert event["detail"]["old_container_folders"] == ["/state/rx-x\n"]
        # Reachable again: its owner can name it in a request (and so stop, disable, delete it).
        with ledger.read() as read:
            row, role = projects.authorize(read, ALICE, "renamed-2", Action.VIEW)
        assert (row["id"], role.value) == (2, "owner")


def test_a_taken_new_name_gets_a_suffix(tmp_path: Path) -> None:
    def seed(db: LedgerDatabase) -> None:
        add_project(db, "renamed-2")
        add_project(db, "bad\n")

    with old_ledger(tmp_path / "ledger.db", seed) as ledger:
        names = [r["name"] for r in ledger.db["projects"].rows_where(order_by="id")]
        assert names == ["renamed-2", "renamed-2-2"]
        assert check_project_name("renamed-2-2") == "renamed-2-2"


@pytest.mark.parametrize("bad", ["x\n", "Upper", "a_b", "-lead", "trail-", "ä", "a" * 22, ""])
def test_every_name_the_api_refuses_is_renamed_to_one_it_accepts(tmp_path: Path, bad: str) -> None:
    with old_ledger(tmp_path / "ledger.db", lambda db: add_project(db, bad)) as ledger:
        [row] = ledger.db["projects"].rows
        assert check_project_name(row["name"]) == row["name"] == "renamed-1"
        assert [e["detail"]["from"] for e in renames(ledger)] == [bad]


def test_good_names_are_left_alone_and_nothing_is_audited(tmp_path: Path) -> None:
    def seed(db: LedgerDatabase) -> None:
        add_project(db, "a", container_state="running", lease=True)
        add_project(db, "ml-2024")

    with old_ledger(tmp_path / "ledger.db", seed) as ledger:
        assert [r["name"] for r in ledger.db["projects"].rows_where(order_by="id")] == [
            "a",
            "ml-2024",
        ]
        assert renames(ledger) == []
