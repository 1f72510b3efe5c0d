"""A project's dev mode: the owner's switch that lets its members build images (docs/images.md).

Stored in the ledger (``projects.dev_mode``); turning it off stops no build that already runs,
it refuses new ones.
"""

from __future__ import annotations

from typing import Any

from rxslurm.daemon.errors import BadRequest
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.projects.roles import Action
from rxslurm.daemon.projects.service import authorize


def set_dev_mode(ledger: Ledger, actor: Actor, name: str, value: Any) -> dict[str, Any]:
    """Turn the project's dev mode on or off (its owners: like its settings); audited when it
    changes."""
    if not isinstance(value, bool):
        raise BadRequest("dev_mode must be true or false")
    with ledger.transaction() as db:
        row, _ = authorize(db, actor, name, Action.EDIT_SETTINGS)
        if bool(row["dev_mode"]) != value:
            db.table("projects").update(row["id"], {"dev_mode": int(value)})
            record_actor_event(
                db, actor, "project.dev-mode", "project", row["name"], {"dev_mode": value}
            )
    return {"name": row["name"], "dev_mode": value}
