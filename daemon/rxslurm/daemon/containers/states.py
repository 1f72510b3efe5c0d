"""The only function that changes a container's state (the states are in rxslurm.protocol).

A state change is one conditional UPDATE (`... WHERE state IN (allowed sources)`) plus its event,
inside the caller's transaction: two racing wakes cannot both move `stopped -> starting`, and a
change never commits without its event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rxslurm.daemon.containers.state_changes import ring_after_commit
from rxslurm.daemon.errors import Conflict
from rxslurm.daemon.ledger.audit import record_event
from rxslurm.daemon.ledger.store import LedgerDatabase
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.quotas import leases as quotas
from rxslurm.protocol.states import ACTIVE, RESTING, State

__all__ = ["ACTIVE", "RESTING", "InvalidTransition", "State", "change_state"]


class InvalidTransition(Conflict):
    code = "invalid_transition"


def change_state(
    db: LedgerDatabase,
    container_id: int,
    to: State,
    *,
    allowed_from: Iterable[State],
    actor: str,
    origin: str,
    actor_uid: int | None = None,
    reason: str | None = None,
    fields: dict[str, Any] | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Move a container to `to` if it is in one of `allowed_from`; return the updated row.

    `fields` are other columns written in the same UPDATE (job bookkeeping, last_error, ...).
    Raises InvalidTransition, changing nothing, when the container is in another state.
    Whoever waits for the container's state is woken once the transaction commits.
    """
    sources = sorted({State(s).value for s in allowed_from})
    now = to_timestamp(utcnow())
    values: dict[str, Any] = {
        "state": to.value,
        "reason": reason,
        "updated_at": now,
        **(fields or {}),
    }
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    placeholders = ", ".join(f":src{i}" for i in range(len(sources)))
    params = {**values, "id": container_id, **{f"src{i}": s for i, s in enumerate(sources)}}
    before = db.execute(
        "SELECT state, job_id FROM containers WHERE id = ?", [container_id]
    ).fetchone()
    if before is None:
        raise InvalidTransition(f"container {container_id} does not exist")
    cursor = db.execute(
        f"UPDATE containers SET {assignments}, generation = generation + 1 "  # noqa: S608 - column names are ours
        f"WHERE id = :id AND state IN ({placeholders})",
        params,
    )
    if cursor.rowcount != 1:
        raise InvalidTransition(
            f"cannot go from {before[0]} to {to.value} (allowed from: {', '.join(sources)})"
        )
    if to in RESTING:
        # A resting container holds nothing: its lease goes in the same transaction.
        quotas.release(db, container_id)
    row = db.table("containers").get(container_id)
    record_event(
        db,
        actor=actor,
        actor_uid=actor_uid,
        origin=origin,
        action="container.state",
        target_type="container",
        target_id=row["name"],
        # The job it moves with (a stop clears it from the row): members' history names it.
        detail={
            "from": before[0],
            "to": to.value,
            "reason": reason,
            "job_id": row["job_id"] if row["job_id"] is not None else before[1],
            **(detail or {}),
        },
    )
    ring_after_commit(db, container_id)
    return row
