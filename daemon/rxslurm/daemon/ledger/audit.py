"""The audit trail: who did what to which target, from where.

An event is written inside the caller's transaction, so a change and its event commit (or roll
back) together. Once committed it is also logged as one structured line on the `rxslurm.audit`
logger; a rolled-back event is never logged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from rxslurm.daemon.ledger.records import Event
from rxslurm.daemon.ledger.store import Ledger, LedgerError
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow

log = logging.getLogger("rxslurm.audit")

# An event keeps who did what, not a copy of every value: a long string is stored as its start,
# its length and a hash (enough to tell two values apart), so no request grows the ledger or the
# journal by more than a few KiB.
MAX_DETAIL_CHARS = 256
KEPT_CHARS = 64
MAX_DETAIL_ITEMS = 64
MAX_DETAIL_DEPTH = 6


def capped(value: Any, depth: int = 0) -> Any:
    """`value` (JSON-like) with long strings, long lists and deep nesting cut, with markers."""
    if isinstance(value, str):
        if len(value) <= MAX_DETAIL_CHARS:
            return value
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return f"{value[:KEPT_CHARS]}…[{len(value)} chars, sha256 {digest}]"
    if isinstance(value, Mapping | list | tuple) and depth >= MAX_DETAIL_DEPTH:
        return "…[nested too deeply]"
    if isinstance(value, Mapping):
        items = list(value.items())
        out = {capped(str(k), depth + 1): capped(v, depth + 1) for k, v in items[:MAX_DETAIL_ITEMS]}
        if len(items) > MAX_DETAIL_ITEMS:
            out["…"] = f"{len(items) - MAX_DETAIL_ITEMS} more entries"
        return out
    if isinstance(value, list | tuple):
        kept = [capped(v, depth + 1) for v in value[:MAX_DETAIL_ITEMS]]
        if len(value) > MAX_DETAIL_ITEMS:
            kept.append(f"…[{len(value) - MAX_DETAIL_ITEMS} more items]")
        return kept
    return value


def record_event(
    db: Database,
    *,
    actor: str,
    actor_uid: int | None,
    origin: str,
    action: str,
    target_type: str | None,
    target_id: str | int | None,
    detail: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> Event:
    """Insert one event in the open transaction of `db` and return it with its id.

    `actor` is a platform user id or "rxd"; `origin` is where the request came from ("socket",
    "tcp", "reconciler", "hook", "cli-admin", ...); `detail` must be JSON-serialisable. Long
    values are stored `capped`.
    """
    if not db.conn.in_transaction:
        raise LedgerError("record_event must run inside `with ledger.transaction() as db:`")
    event = Event(
        at=at or utcnow(),
        actor=capped(actor),
        actor_uid=actor_uid,
        origin=origin,
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else capped(str(target_id)),
        detail=capped(dict(detail or {})),
    )
    row = event.to_row()
    del row["id"]
    event = replace(event, id=db.table("events").insert(row).last_rowid)
    after_commit = getattr(db, "after_commit", None)
    if after_commit is None:
        # A plain Database (not from a Ledger) cannot tell us about the commit.
        _log(event)
    else:
        after_commit.append(lambda: _log(event))
    return event


def _log(event: Event) -> None:
    row = event.to_row()
    fields = {
        "event_id": event.id,
        "at": row["at"],
        "actor": event.actor,
        "actor_uid": event.actor_uid,
        "origin": event.origin,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "detail": event.detail,
    }
    # With rxd's JSON formatter (logs.py) the fields become keys of the one JSON line.
    log.info("audit %s", event.action, extra=fields)


def list_events(
    ledger: Ledger,
    *,
    since: datetime | None = None,
    target: tuple[str, str | int | None] | None = None,
    limit: int = 100,
) -> list[Event]:
    """The newest `limit` events (at or after `since`, about `target`), oldest first.

    `target` is (target_type, target_id); a target_id of None means every target of that type.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    clauses: list[str] = []
    args: list[Any] = []
    if since is not None:
        clauses.append("at >= ?")
        args.append(to_timestamp(since))
    if target is not None:
        target_type, target_id = target
        clauses.append("target_type = ?")
        args.append(target_type)
        if target_id is not None:
            clauses.append("target_id = ?")
            args.append(str(target_id))
    rows = ledger.db.table("events").rows_where(
        " AND ".join(clauses) or None, args, order_by="id DESC", limit=limit
    )
    return [Event.from_row(row) for row in reversed(list(rows))]
