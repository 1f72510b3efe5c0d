"""Who may read a project's overlay snapshots, and keeping their ACLs in step with its members.

Batch steps run as the member, in their own job: members with the `run` action (roles.py) and a
bound Linux identity get read on the kept snapshots and traverse-only on the folders above them,
set as the runtime user (runtime/overlay_snapshot.py); nobody else may open them. rxd sets these
when it takes a snapshot and when members change (workspace_sync.sync_snapshot_access, where the
workspace's grants are updated).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from rxslurm.daemon.ledger.store import LedgerDatabase
from rxslurm.daemon.projects.roles import ALLOWED, Action


def run_member_uids(db: LedgerDatabase, project_id: int, runtime_uid: int | None) -> list[int]:
    """The bound uids of the members who may run batch steps, the runtime identity aside (it
    owns the files)."""
    rows = db.execute(
        "SELECT b.uid, m.role FROM members m JOIN bindings b "
        "ON b.platform_user_id = m.platform_user_id WHERE m.project_id = ?",
        [project_id],
    ).fetchall()
    runners = {r.value for r in ALLOWED[Action.RUN]}
    return sorted({uid for uid, role in rows if role in runners and uid != runtime_uid})


def kept_rows(db: LedgerDatabase, container: dict[str, Any]) -> list[dict[str, Any]]:
    """The container's snapshots still on disk for its current runtime identity, newest first."""
    if container.get("runtime_uid") is None:
        return []
    return list(
        db.table("overlay_snapshots").rows_where(
            "container_id = ? AND runtime_uid = ? AND removed_at IS NULL",
            [container["id"], container["runtime_uid"]],
            order_by="id DESC",
        )
    )


def file_name(row: dict[str, Any]) -> str:
    return PurePosixPath(row["path"]).name
