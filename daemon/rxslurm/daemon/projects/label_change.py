"""Setting and removing a project's labels (`rxctl project label`): its owners and managers, like
its settings; audited when anything changed. The rules are projects/labels.py's."""

from __future__ import annotations

from typing import Any

from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.projects import labels
from rxslurm.daemon.projects.roles import Action
from rxslurm.daemon.projects.service import authorize


def change_labels(ledger: Ledger, actor: Actor, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body``: ``set`` (an object key -> value) and ``remove`` (a list of keys)."""
    to_set = body.get("set", {})
    to_remove = body.get("remove", [])
    if not isinstance(to_set, dict) or not isinstance(to_remove, list):
        raise BadRequest("set is an object of label -> value, remove a list of label names")
    if not to_set and not to_remove:
        raise BadRequest("nothing to change: give labels to set or to remove")
    with ledger.transaction() as db:
        row, _ = authorize(db, actor, name, Action.EDIT_SETTINGS)
        before = labels.labels_of(db, row["id"])
        after = labels.apply(
            db, row["id"], to_set, to_remove, at=to_timestamp(utcnow()), by=actor.name
        )
        if after != before:
            detail = {"before": before, "after": after}
            record_actor_event(db, actor, "project.labels", "project", row["name"], detail)
    return {"name": row["name"], "labels": after}
