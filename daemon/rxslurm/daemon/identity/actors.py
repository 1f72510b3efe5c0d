"""Who a request acts for (an Actor), and the audit event of something an actor did.

How a transport's proved identity becomes an Actor is the API's part (api/request_actor.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rxslurm.daemon.ledger.audit import record_event
from rxslurm.daemon.ledger.store import LedgerDatabase


@dataclass(frozen=True)
class Actor:
    """Who a request acts for, once the transport has proved it."""

    platform_user: str | None
    uid: int | None  # the Linux uid: the socket peer's, or the bound uid of a platform user
    user: str | None
    admin: bool
    origin: str  # "socket" or "tcp"

    @property
    def name(self) -> str:
        """How the audit log names this actor."""
        return self.platform_user or self.user or f"uid:{self.uid}"


def record_actor_event(
    db: LedgerDatabase,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """An audit event for something `actor` did, in the caller's transaction."""
    record_event(
        db,
        actor=actor.name,
        actor_uid=actor.uid,
        origin=actor.origin,
        action=action,
        target_type=target_type,
        target_id=target_id,
        detail=detail or {},
    )
