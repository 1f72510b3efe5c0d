"""Who may read a project's overlay snapshots, and keeping their ACLs in step with its members.

Batch steps run as the member, in their own job: members with the `run` action (roles.py) and a
bound Linux identity get read on the kept snapshots and traverse-only on the folders above them,
set as the runtime user (runtime/overlay_snapshot.py); nobody else may open them. rxd sets these
when it takes a snapshot and when members change (where the workspace's grants are updated).
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.ledger.store import Ledger, LedgerDatabase
from rxslurm.daemon.projects.roles import ALLOWED, Action
from rxslurm.daemon.projects.service import runtime_identity
from rxslurm.daemon.runtime import overlay_snapshot
from rxslurm.slurm.runas import RunAs

log = logging.getLogger("rxslurm.snapshots")


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


def sync_snapshot_access(ledger: Ledger, config: Config, name: str) -> None:
    """Give the project's current `run` members (and only them) read on its kept snapshots.
    Nothing to do before its container has a folder, or while it still belongs to a former
    runtime identity (its next start moves it to quarantine). Raises SnapshotError."""
    with ledger.read() as db:
        projects = list(db.table("projects").rows_where("name = ?", [name]))
        if not projects:
            return
        project = projects[0]
        runtime = runtime_identity(db, config, project)
        rows = list(db.table("containers").rows_where("project_id = ?", [project["id"]]))
        container = rows[0] if rows else None
        if container is None or not container["state_dir"] or runtime is None:
            return
        if container["runtime_user"] != runtime:
            return
        keep = [file_name(r) for r in kept_rows(db, container)]
        uids = run_member_uids(db, project["id"], container["runtime_uid"])
    overlay_snapshot.set_access(container["state_dir"], keep, uids, RunAs.for_user(runtime))
    log.info("snapshot access set", extra={"project": name, "uids": uids})
