"""Keeping a project's workspace ACLs in line with its members and runtime identity."""

from __future__ import annotations

import logging
from pathlib import Path

from rxslurm.daemon.config import Config
from rxslurm.daemon.ledger import Ledger
from rxslurm.daemon.projects import runtime_identity
from rxslurm.daemon.workspaces import grants_for, prepare

log = logging.getLogger("rxslurm.workspaces")


def sync_workspace(
    ledger: Ledger, config: Config, name: str, revoke: tuple[str, ...] = ()
) -> str | None:
    """Prepare the workspace for the project's current members; None if it is ready.

    Returns a one-line warning when the runtime identity is not bound yet (nothing to prepare).
    Raises WorkspaceError when preparing failed.
    """
    with ledger.read() as db:
        rows = list(db["projects"].rows_where("name = ?", [name]))
        if not rows:
            return None
        project = rows[0]
        runtime = runtime_identity(db, config, project)
        members = db.execute(
            "SELECT b.username, m.role FROM members m LEFT JOIN bindings b "
            "ON b.platform_user_id = m.platform_user_id WHERE m.project_id = ?",
            [project["id"]],
        ).fetchall()
    if runtime is None:
        return (
            "the project's runtime identity is not bound yet; its workspace is prepared once it is"
        )
    prepare(Path(project["workspace"]), runtime, grants_for(members, runtime), revoke=list(revoke))
    log.info("workspace prepared", extra={"project": name, "runtime_user": runtime})
    return None
