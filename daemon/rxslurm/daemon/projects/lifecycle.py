"""A project with its folders, as one command each: created with its workspace (and undone when
the folder cannot be made), deleted with its folders moved out of reach, kept in line after a
change of members or run-as identity. The routes and the platform call these; the records alone
are projects/service.py's, the folders alone workspace_sync.py's."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.errors import ApiError
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.projects import service as projects
from rxslurm.daemon.projects.environment import forget_secrets
from rxslurm.daemon.projects.volumes import sync_project_volumes
from rxslurm.daemon.projects.workspace_sync import (
    retire_folders,
    sync_snapshot_access,
    sync_workspace,
)
from rxslurm.daemon.projects.workspaces import WorkspaceError
from rxslurm.daemon.quarantine import QuarantineError
from rxslurm.daemon.runtime.overlay_snapshot import SnapshotError
from rxslurm.daemon.settings import Settings

log = logging.getLogger("rxslurm.projects")


def create(
    ledger: Ledger,
    config: Config,
    actor: Actor,
    *,
    name: Any,
    settings: Any,
    validate: Callable[[Settings], None] | None,
) -> dict[str, Any]:
    """The project's records, then its workspace; when the folder cannot be made the records go
    again, so a failed create leaves nothing behind."""
    view = projects.create_project(
        ledger, config, actor, name=name, settings=settings, validate=validate
    )
    try:
        # Fresh: whatever sits at the new project's path is someone else's and goes to quarantine.
        sync_workspace(ledger, config, view["name"], fresh=True)
    except (WorkspaceError, OSError) as exc:
        delete(ledger, config, actor, view["name"])
        raise ApiError(
            f"cannot prepare the project's workspace: {exc}", status=500, code="workspace"
        ) from None
    return view


def delete(ledger: Ledger, config: Config, actor: Actor, name: str) -> dict[str, Any]:
    """Delete the records, then move the folders out of reach (a crash in between leaves them
    where the next project of that name quarantines them)."""
    with ledger.read() as db:
        identity = list(db.execute("SELECT id, created_at FROM projects WHERE name = ?", [name]))
    workspace = projects.delete_project(ledger, actor, name)
    answer: dict[str, Any] = {"deleted": name}
    # Its secrets' file is checked against the project's id and creation time, so this removes
    # only the deleted project's, even if the name was taken again meanwhile.
    warning = forget_secrets(config, *identity[0]) if identity else None
    try:
        answer["quarantined"] = retire_folders(config, name, workspace)
        with ledger.transaction() as db:
            detail = {"paths": answer["quarantined"]}
            record_actor_event(db, actor, "project.folders-quarantined", "project", name, detail)
    except (QuarantineError, OSError) as exc:
        log.error("cannot quarantine folders", extra={"project": name, "error": str(exc)})
        answer["warnings"] = [f"folders not moved to quarantine: {exc}"]
    if warning:
        answer.setdefault("warnings", []).append(warning)
    return answer


def sync_or_warn(
    ledger: Ledger, config: Config, name: str, revoke: tuple[str, ...] = ()
) -> str | None:
    """Bring the workspace and who may read the overlay snapshots in line; a failure is
    reported, the committed change stands."""
    warnings = []
    try:
        warnings.append(sync_workspace(ledger, config, name, revoke))
    except (WorkspaceError, OSError) as exc:
        log.error("workspace sync failed", extra={"project": name, "error": str(exc)})
        warnings.append(f"workspace not prepared: {exc}")
    try:
        sync_snapshot_access(ledger, config, name)
    except (SnapshotError, OSError, ValueError) as exc:
        log.error("snapshot access sync failed", extra={"project": name, "error": str(exc)})
        warnings.append(f"snapshot access not updated: {exc}")
    # Volumes it owns follow its members; volumes it mounts follow its runtime identity.
    warnings.append(sync_project_volumes(ledger, config, name, revoke))
    return "; ".join(w for w in warnings if w) or None
