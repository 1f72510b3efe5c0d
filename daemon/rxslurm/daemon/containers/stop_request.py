"""Asking a container to stop, inside the caller's ledger transaction."""

from __future__ import annotations

from typing import Any

from rxslurm.daemon.containers.states import ACTIVE, State, change_state
from rxslurm.daemon.ledger.store import LedgerDatabase


def request_stop(
    db: LedgerDatabase, container: dict[str, Any], reason: str, **actor: Any
) -> int | None:
    """Mark the container as wanted stopped and move it towards STOPPED; the Slurm job to cancel
    once the transaction commits (None: there is none, or a stop is already under way)."""
    db.table("containers").update(container["id"], {"desired": "stopped"})
    job_id = container["job_id"]
    if container["state"] not in ACTIVE or container["state"] == State.STOPPING:
        return None
    if job_id is None:
        # Still submitting: the submitter cancels its job when it sees this.
        change_state(
            db,
            container["id"],
            State.STOPPED,
            allowed_from=[State.STARTING, State.WAITING],
            reason=reason,
            **actor,
        )
        return None
    change_state(
        db,
        container["id"],
        State.STOPPING,
        allowed_from=[State.WAITING, State.STARTING, State.RUNNING],
        reason=reason,
        **actor,
    )
    return int(job_id)
