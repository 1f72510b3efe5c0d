"""Keeping a project's folders (its workspace, who may read its overlay snapshots) in line with its
members and runtime identity, and retiring them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from rxslurm.daemon.config import Config
from rxslurm.daemon.ledger.store import Ledger
from rxslurm.daemon.projects.service import no_run_as_message, runtime_identity
from rxslurm.daemon.projects.snapshot_access import file_name, kept_rows, run_member_uids
from rxslurm.daemon.projects.workspaces import grants_for, park, prepare, retire
from rxslurm.daemon.quarantine import quarantine
from rxslurm.daemon.runtime import overlay_snapshot
from rxslurm.protocol.job_comment import is_build_of
from rxslurm.protocol.job_comment import job_name as container_name
from rxslurm.slurm.runas import RunAs

log = logging.getLogger("rxslurm.workspaces")


def sync_workspace(
    ledger: Ledger, config: Config, name: str, revoke: tuple[str, ...] = (), *, fresh: bool = False
) -> str | None:
    """Prepare the workspace for the project's current members; None if it is ready.

    Returns a one-line warning when there is nothing to prepare for (no runtime identity: an
    existing folder is then parked as root's) or when entries below the folder kept their ACLs.
    `fresh`: the project was just created. Raises WorkspaceError when preparing failed.
    """
    with ledger.read() as db:
        rows = list(db.table("projects").rows_where("name = ?", [name]))
        if not rows:
            return None
        project = rows[0]
        runtime = runtime_identity(db, config, project)
        members = db.execute(
            "SELECT b.username, m.role FROM members m LEFT JOIN bindings b "
            "ON b.platform_user_id = m.platform_user_id WHERE m.project_id = ?",
            [project["id"]],
        ).fetchall()
    path = Path(project["workspace"])
    if runtime is None:
        if path.parent.is_dir() and park(path):
            _record_owner(ledger, project["id"], 0)
        if project["run_as"] == "bound" and project["run_as_user"] is None:
            return no_run_as_message(name) + "; until then its workspace is root's"
        return (
            "the project's runtime identity is not bound yet; its workspace is prepared once it is"
        )
    prepared = prepare(
        path,
        runtime,
        grants_for(members, runtime),
        recorded_uid=project["workspace_uid"],
        fresh=fresh,
        revoke=revoke,
    )
    if prepared.uid != project["workspace_uid"]:
        _record_owner(ledger, project["id"], prepared.uid)
    log.info("workspace prepared", extra={"project": name, "runtime_user": runtime})
    return prepared.warning


def _record_owner(ledger: Ledger, project_id: int, uid: int) -> None:
    with ledger.transaction() as db:
        if db.table("projects").count_where("id = ?", [project_id]):
            db.table("projects").update(project_id, {"workspace_uid": uid})


def retire_folders(config: Config, name: str, workspace: str) -> list[str]:
    """A deleted project's workspace, container folder and image build folders go to quarantine;
    where they went."""
    folder = Path(workspace)
    moved = [retire(folder) if folder.parent.is_dir() else None]
    state_root = config.containers.state_root
    if state_root.is_dir():
        moved.append(quarantine(state_root, container_name(name)))
        # Names in the root-owned state root only: nothing below them is read.
        builds = sorted(n for n in os.listdir(state_root) if is_build_of(n, name))
        moved += [quarantine(state_root, build) for build in builds]
    return [str(m) for m in moved if m is not None]


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
