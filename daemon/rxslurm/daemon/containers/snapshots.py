"""Overlay snapshots in the ledger: which one batch steps get, and what `rxctl status` says of it.

Only the container's holder mounts its overlay, writable. Batch steps mount a read-only copy, a
snapshot, taken while no job mounts the overlay (see containers/snapshot_policy.py for when, and
runtime/overlay_snapshot.py for the copy). A snapshot belongs to the runtime identity it was taken
as: when the project runs as someone else, that identity's folder (snapshots included) went to
quarantine, so its rows no longer count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rxslurm.daemon.ledger.store import LedgerDatabase
from rxslurm.daemon.projects.snapshot_access import kept_rows


@dataclass(frozen=True)
class SnapshotRef:
    """A snapshot as the batch plan names it."""

    id: int
    path: str
    taken_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def newest_snapshot(db: LedgerDatabase, container: dict[str, Any]) -> SnapshotRef | None:
    """The snapshot batch steps get now; None: they get the bare image."""
    rows = kept_rows(db, container)
    if not rows:
        return None
    row = rows[0]
    return SnapshotRef(id=row["id"], path=row["path"], taken_at=row["taken_at"])
