"""A project's timeline for its members (``rxctl history``): the audit events about the project
and its container, newest last.

The events are those rxd already records in the same transaction as each change (ledger/audit.py):
the container's state changes with their reasons, actors and jobs, and what members did to the
project (settings, members, run-as). A project name can be used again after a delete, so only
events since this project was created are shown.
"""

from __future__ import annotations

from typing import Any

from rxslurm.daemon.identity.actors import Actor
from rxslurm.daemon.ledger.records import Event
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.projects.roles import Action
from rxslurm.daemon.projects.service import authorize
from rxslurm.protocol.job_comment import job_name

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


def project_history(
    ledger: Ledger, actor: Actor, project: str, limit: int = DEFAULT_LIMIT
) -> list[dict[str, Any]]:
    """The newest `limit` events of the project and its container, oldest first."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be from 1 to {MAX_LIMIT}")
    with ledger.read() as db:
        row, _ = authorize(db, actor, project, Action.VIEW)
        rows = db.execute(
            "SELECT * FROM events WHERE ((target_type = 'project' AND target_id = ?) "
            "OR (target_type = 'container' AND target_id = ?)) AND at >= ? "
            "ORDER BY id DESC LIMIT ?",
            [row["name"], job_name(row["name"]), row["created_at"], limit],
        )
        columns = [c[0] for c in rows.description]
        events = [Event.from_row(dict(zip(columns, r, strict=True))) for r in rows.fetchall()]
    return [_entry(event) for event in reversed(events)]


def _entry(event: Event) -> dict[str, Any]:
    row = event.to_row()
    return {
        "id": event.id,
        "at": row["at"],
        "actor": event.actor,
        "origin": event.origin,
        "action": event.action,
        "target": event.target_type,
        "detail": event.detail,
    }
