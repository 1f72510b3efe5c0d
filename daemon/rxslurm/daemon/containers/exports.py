"""Export and import of a project's persistent layer (docs/data.md): who may, from which copy,
into which container, and what the audit says.

Export reads the overlay from a snapshot, never the live image: a sleeping container's overlay is
snapshotted first (or its newest snapshot kept when unchanged), an awake one's newest snapshot is
used. Import goes only into an enabled, sleeping container; the script that unpacks it holds the
overlay's lock, so a wake during the import waits for it (the holder waits for that lock). The
file work of both runs as the runtime user (runtime/archive_export.py, archive_import.py); here
only ledger reads, decisions and audit events.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rxslurm.daemon.containers.snapshot_policy import asleep
from rxslurm.daemon.containers.states import State
from rxslurm.daemon.errors import Conflict
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.projects.roles import Action
from rxslurm.daemon.projects.service import authorize
from rxslurm.daemon.projects.snapshot_access import kept_rows
from rxslurm.daemon.projects.workspace_sync import sync_workspace
from rxslurm.daemon.projects.workspaces import WorkspaceError
from rxslurm.daemon.runtime.archive_import import BACKUP, Outcome
from rxslurm.daemon.runtime.archive_rules import FORMAT, Limits
from rxslurm.daemon.runtime.overlay_snapshot import SnapshotError
from rxslurm.daemon.version import __version__
from rxslurm.slurm.runas import RunAs

if TYPE_CHECKING:
    from rxslurm.daemon.containers.service import ContainerService

log = logging.getLogger("rxslurm.exports")

# What rxd accepts of an upload, compressed; the unpacked limits are Limits'.
MAX_UPLOAD_BYTES = 32 * 1024**3
LIMITS = Limits()
_DIGEST = re.compile(r"@(sha256:[0-9a-f]{64})$")


@dataclass(frozen=True)
class ExportPlan:
    project: str
    snapshot: str  # the snapshot file the overlay is read from
    workspace: str | None
    runas: RunAs | None
    manifest: dict[str, Any]


@dataclass(frozen=True)
class ImportPlan:
    project: str
    container_id: int
    state_dir: str
    workspace: str | None
    runas: RunAs | None
    stamp: str


def _container(service: ContainerService, row: dict[str, Any]) -> dict[str, Any]:
    with service.ledger.read() as db:
        rows = list(db.table("containers").rows_where("project_id = ?", [row["id"]]))
    container = rows[0] if rows else None
    if container is None or container["state"] == State.DISABLED or not container["state_dir"]:
        raise Conflict(f"the container of {row['name']} is not enabled; it has no overlay")
    return container


def image_digest(image: str | None) -> str | None:
    match = _DIGEST.search(image or "")
    return match[1] if match else None


def plan_export(
    service: ContainerService, actor: Actor, project: str, workspace: bool
) -> ExportPlan:
    """Authorize (``export``), choose the snapshot to read, and audit the export."""
    with service.ledger.read() as db:
        row, _ = authorize(db, actor, project, Action.EXPORT)
    container = _container(service, row)
    name = row["name"]
    snapshot: dict[str, Any] | None = None
    if asleep(container):
        try:
            taken = service.snapshots.take(container["id"], force=False, actor=actor)
        except (SnapshotError, ValueError) as exc:
            raise Conflict(f"cannot copy the overlay of {name}: {exc}") from None
        snapshot = taken.snapshot
    if snapshot is None:
        with service.ledger.read() as db:
            kept = kept_rows(db, container)
        if not kept and asleep(container):
            raise Conflict(
                f"the overlay of {name} is still held by its last job and has no snapshot yet: "
                "export again once the job let go of it"
            )
        if not kept:
            raise Conflict(
                f"the container of {name} is awake and has no snapshot of its overlay yet: "
                f"`rxctl stop --project {name}`, then export"
            )
        snapshot = kept[0]
    folder = row["workspace"] if workspace and row["workspace"] else None
    manifest = {
        "format": FORMAT,
        "project": name,
        "image": container["image"],
        "image_digest": image_digest(container["image"]),
        "snapshot_taken_at": snapshot["taken_at"],
        "rxslurm_version": __version__,
        "created_at": service.clock().isoformat(),
    }
    with service.ledger.transaction() as db:
        record_actor_event(
            db,
            actor,
            "project.export",
            "project",
            name,
            {"snapshot": snapshot["id"], "workspace": folder is not None},
        )
    return ExportPlan(
        name, snapshot["path"], folder, service.snapshots.runas(container["runtime_user"]), manifest
    )


def plan_import(service: ContainerService, actor: Actor, project: str) -> ImportPlan:
    """Authorize (``import``) and refuse, in one line, a container that is not enabled or not
    asleep."""
    with service.ledger.read() as db:
        row, _ = authorize(db, actor, project, Action.IMPORT)
    container = _container(service, row)
    name = row["name"]
    if not asleep(container):
        raise Conflict(
            f"the container of {name} is awake ({container['state']}): "
            f"`rxctl stop --project {name}` first, then import"
        )
    return ImportPlan(
        name,
        container["id"],
        container["state_dir"],
        row["workspace"] or None,
        service.snapshots.runas(container["runtime_user"]),
        stamp(service.clock()),
    )


def stamp(now: datetime) -> str:
    return now.strftime("%Y%m%d%H%M%S%f")


def finish_import(
    service: ContainerService, actor: Actor, plan: ImportPlan, outcome: Outcome, received: int
) -> dict[str, Any]:
    """Audit what the import script did; on success the old overlay's snapshots go (batch steps
    must not get the replaced software) and a new one is taken of the imported overlay."""
    detail: dict[str, Any] = {"received_bytes": received}
    if outcome.busy:
        detail["refused"] = "a job holds the overlay"
    elif outcome.refused is not None:
        detail["refused"] = outcome.refused
    if "refused" in detail:
        with service.ledger.transaction() as db:
            record_actor_event(db, actor, "project.import-refused", "project", plan.project, detail)
        why = detail["refused"]
        raise Conflict(f"import into {plan.project} refused: {why}; nothing was changed")
    manifest = outcome.manifest or {}
    detail.update(
        overlay_bytes=outcome.overlay_bytes,
        workspace_folder=outcome.workspace_folder,
        workspace_files=outcome.workspace_files,
        source_project=str(manifest.get("project", ""))[:200],
        source_version=str(manifest.get("rxslurm_version", ""))[:64],
        backup=(plan.state_dir + "/" + BACKUP) if outcome.backup else None,
        backup_note="the replaced overlay is kept until garbage collection removes it",
    )
    with service.ledger.transaction() as db:
        record_actor_event(db, actor, "project.import", "project", plan.project, detail)
        container = dict(db.table("containers").get(plan.container_id))
    if outcome.workspace_folder:
        # The script kept the new folder private while it unpacked; members get their entries
        # now, as everywhere else in the workspace.
        try:
            warning = sync_workspace(service.ledger, service.config, plan.project)
        except (WorkspaceError, ValueError, OSError) as exc:
            warning = str(exc)  # the import stands; the next sync of members tries again
        if warning:
            log.warning("workspace ACLs", extra={"project": plan.project, "warning": warning})
    service.snapshots.remove_all(container)
    try:
        service.snapshots.take(plan.container_id, force=True, actor=actor)
    except (SnapshotError, ValueError) as exc:
        # Not fatal: the import stands; batch steps get the bare image until the next snapshot.
        log.warning("no snapshot after import", extra={"project": plan.project, "error": str(exc)})
    return {"project": plan.project, "imported": True, **detail}
