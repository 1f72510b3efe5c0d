"""A project's history: the audit events of the project and its container (never another's, nor
those of an earlier project of the same name), oldest first, for members only; and how
`rxctl history` shows them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from rxslurm.cli.commands_history import history_lines, what
from rxslurm.cli.render import Shape
from rxslurm.daemon.containers.history import project_history
from rxslurm.daemon.errors import NotFound
from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.audit import record_event
from rxslurm.daemon.ledger.timestamps import to_timestamp
from tests.unit.test_reconciler_edges import OWNER, world

STRANGER = Actor(platform_user="sam", uid=65532, user="sam", admin=False, origin="socket")


def test_a_stop_start_cycle_shows_each_state_with_who_and_the_job(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"), ("beta", "stopped"))
    w.service.wake(OWNER, "alpha")
    first = w.row("alpha")["job_id"]
    w.slurm.run(first)
    w.runtime.report(first, f"running rx-alpha-{first}")
    w.reconcile()
    w.service.stop(OWNER, "alpha")  # the fake Slurm ends the job at once
    w.reconcile()
    w.service.wake(OWNER, "alpha")
    second = w.row("alpha")["job_id"]
    w.service.wake(OWNER, "beta")

    events = project_history(w.ledger, OWNER, "alpha")

    moves = [
        (e["actor"], e["detail"]["from"], e["detail"]["to"], e["detail"]["job_id"]) for e in events
    ]
    assert moves == [
        ("ada", "stopped", "starting", None),  # the job is submitted after this commits
        ("rxd", "starting", "running", first),
        ("ada", "running", "stopping", first),
        ("rxd", "stopping", "stopped", first),
        ("ada", "stopped", "starting", None),
    ]
    assert second not in (None, first)
    assert events[2]["detail"]["reason"] == "stopped by user"


def test_history_holds_the_projects_own_events_newest_last_and_limited(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"), ("beta", "stopped"))
    with w.ledger.transaction() as db:
        for n in range(5):
            record_event(
                db,
                actor="ada",
                actor_uid=65534,
                origin="socket",
                action="project.settings-changed",
                target_type="project",
                target_id="alpha",
                detail={"changes": {"cpus": n}},
            )
        record_event(
            db,
            actor="ada",
            actor_uid=65534,
            origin="socket",
            action="project.settings-changed",
            target_type="project",
            target_id="beta",
        )

    events = project_history(w.ledger, OWNER, "alpha", limit=3)

    assert [e["detail"]["changes"]["cpus"] for e in events] == [2, 3, 4]
    assert {e["action"] for e in events} == {"project.settings-changed"}


def test_an_earlier_project_of_the_same_name_is_not_in_the_history(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))
    with w.ledger.transaction() as db:
        record_event(
            db,
            actor="eve",
            actor_uid=1,
            origin="socket",
            action="project.deleted",
            target_type="project",
            target_id="alpha",
        )
        later = to_timestamp(w.clock() + timedelta(days=1))
        db.execute("UPDATE events SET at = ?", [to_timestamp(w.clock() - timedelta(days=1))])
        db.execute("UPDATE projects SET created_at = ? WHERE name = 'alpha'", [later])

    assert project_history(w.ledger, OWNER, "alpha") == []


def test_a_stranger_gets_no_history(tmp_path: Path) -> None:
    w = world(tmp_path, ("alpha", "stopped"))

    with pytest.raises(NotFound, match="no project named 'alpha'"):
        project_history(w.ledger, STRANGER, "alpha")


def test_the_table_shows_state_changes_as_moves_with_their_reason_and_job() -> None:
    events = [
        {
            "at": "2026-11-30T22:01:02.000000Z",
            "actor": "ada",
            "action": "container.state",
            "detail": {
                "from": "running",
                "to": "stopping",
                "reason": "stopped by user",
                "job_id": 42,
            },
        },
        {
            "at": "2026-11-30T22:03:00.000000Z",
            "actor": "bea",
            "action": "project.member-added",
            "detail": {"user": "cy\x1b[2J", "role": "viewer"},
        },
    ]

    lines = history_lines(events, Shape())

    assert lines == [
        "AT                    BY   WHAT                 JOB  DETAIL",
        "2026-11-30 22:01:02Z  ada  running -> stopping  42   stopped by user",
        "2026-11-30 22:03:00Z  bea  member-added         -    role=viewer user=cy\\x1b[2J",
    ]
    assert what({"action": "image.pull", "detail": {}}) == ("image.pull", None, "-")
