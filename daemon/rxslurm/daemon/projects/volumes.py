"""Named volumes: folders under [volumes] root that one project owns and projects of the same
owners mount (docs/volumes.md).

A volume's folder is made and kept exactly as a workspace is (projects/workspaces.py): root makes
it in the root-owned volumes root and hands it to the owning project's runtime identity; ACLs are
set as that identity, never as root. Who gets an entry: the owning project's members by role (as
on its workspace), and the runtime identity of each project that mounts it (write unless every
mount it has is read-only), for mounts the rule still allows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rxslurm.daemon.config import Config
from rxslurm.daemon.errors import ApiError, Conflict, Forbidden, NotFound
from rxslurm.daemon.identity.actors import Actor, record_actor_event
from rxslurm.daemon.ledger.store import Ledger, LedgerDatabase
from rxslurm.daemon.ledger.timestamps import to_timestamp, utcnow
from rxslurm.daemon.projects.roles import Action, Role
from rxslurm.daemon.projects.service import authorize, require_runtime_identity, runtime_identity
from rxslurm.daemon.projects.volume_rules import Mount, check_mount, check_volume_name, may_mount
from rxslurm.daemon.projects.workspaces import (
    Grant,
    WorkspaceError,
    grants_for,
    park,
    prepare,
    retire,
)
from rxslurm.daemon.quarantine import QuarantineError

log = logging.getLogger("rxslurm.volumes")


def owners_of(db: LedgerDatabase, project_id: int) -> set[str]:
    rows = db.execute(
        "SELECT platform_user_id FROM members WHERE project_id = ? AND role = ?",
        [project_id, Role.OWNER.value],
    ).fetchall()
    return {r[0] for r in rows}


def _volume(db: LedgerDatabase, name: str) -> dict[str, Any] | None:
    rows = list(db.table("volumes").rows_where("name = ?", [name]))
    return rows[0] if rows else None


def _mounts_of_volume(db: LedgerDatabase, volume_id: int) -> list[dict[str, Any]]:
    return [
        dict(zip(("project", "project_id", "target", "read_only"), row, strict=True))
        for row in db.execute(
            "SELECT p.name, p.id, m.target, m.read_only FROM volume_mounts m "
            "JOIN projects p ON p.id = m.project_id WHERE m.volume_id = ? ORDER BY p.name",
            [volume_id],
        ).fetchall()
    ]


def allowed_mounts(db: LedgerDatabase, project: dict[str, Any]) -> list[tuple[Mount, str]]:
    """The project's mounts the rule allows now, each with its volume's folder. The rule is
    checked again here, not only when the mount was set: owners change."""
    mine = owners_of(db, project["id"])
    rows = db.execute(
        "SELECT v.name, v.path, v.project_id, m.target, m.read_only FROM volume_mounts m "
        "JOIN volumes v ON v.id = m.volume_id WHERE m.project_id = ? ORDER BY m.target",
        [project["id"]],
    ).fetchall()
    allowed = []
    for name, path, owner_project, target, read_only in rows:
        if may_mount(owners_of(db, owner_project), mine):
            allowed.append((Mount(name, target, bool(read_only)), path))
        else:
            log.warning(
                "volume mount no longer allowed, left out",
                extra={"project": project["name"], "volume": name},
            )
    return allowed


def project_binds(db: LedgerDatabase, project: dict[str, Any]) -> tuple[str, ...]:
    """Apptainer -B specs of the project's volumes, for the holder and batch steps."""
    return tuple(mount.bind(path) for mount, path in allowed_mounts(db, project))


def _view(db: LedgerDatabase, volume: dict[str, Any], owner: str) -> dict[str, Any]:
    return {
        "name": volume["name"],
        "project": owner,
        "path": volume["path"],
        "created_by": volume["created_by"],
        "created_at": volume["created_at"],
        "mounted_by": [
            {"project": m["project"], "target": m["target"], "read_only": bool(m["read_only"])}
            for m in _mounts_of_volume(db, volume["id"])
        ],
    }


def list_volumes(ledger: Ledger, actor: Actor, project: str) -> dict[str, Any]:
    """The volumes the project owns and the ones it mounts (any member may see them)."""
    with ledger.read() as db:
        row, _ = authorize(db, actor, project, Action.VIEW)
        owned = list(db.table("volumes").rows_where("project_id = ?", [row["id"]], order_by="name"))
        allowed = {m.volume for m, _ in allowed_mounts(db, row)}
        mounts = [
            {
                "volume": r[0],
                "project": r[1],
                "path": r[2],
                "target": r[3],
                "read_only": bool(r[4]),
                "allowed": r[0] in allowed,
            }
            for r in db.execute(
                "SELECT v.name, p.name, v.path, m.target, m.read_only FROM volume_mounts m "
                "JOIN volumes v ON v.id = m.volume_id JOIN projects p ON p.id = v.project_id "
                "WHERE m.project_id = ? ORDER BY m.target",
                [row["id"]],
            ).fetchall()
        ]
        volumes = [_view(db, v, row["name"]) for v in owned]
    return {"project": row["name"], "volumes": volumes, "mounts": mounts}


def create_volume(
    ledger: Ledger, config: Config, actor: Actor, project: str, name: Any
) -> dict[str, Any]:
    """The volume's record, then its folder; when the folder cannot be made the record goes."""
    name = check_volume_name(name)
    path = config.volumes.root / name
    with ledger.transaction() as db:
        row, _ = authorize(db, actor, project, Action.EDIT_SETTINGS)
        require_runtime_identity(db, config, row)
        if _volume(db, name):
            raise Conflict(f"a volume named {name!r} already exists")
        db.table("volumes").insert(
            {
                "name": name,
                "project_id": row["id"],
                "path": str(path),
                "created_by": actor.name,
                "created_at": to_timestamp(utcnow()),
            }
        )
        record_actor_event(
            db, actor, "volume.created", "volume", name, {"project": project, "path": str(path)}
        )
    try:
        # Fresh: whatever sits at the new volume's path is someone else's and goes to quarantine.
        warning = sync_volume(ledger, config, name, fresh=True)
    except (WorkspaceError, QuarantineError, OSError) as exc:
        with ledger.transaction() as db:
            db.execute("DELETE FROM volumes WHERE name = ?", [name])
            record_actor_event(db, actor, "volume.create-undone", "volume", name)
        raise ApiError(
            f"cannot prepare the volume's folder: {exc}", status=500, code="workspace"
        ) from None
    with ledger.read() as db:
        volume = _volume(db, name)
        assert volume is not None
        view = _view(db, volume, project)
    if warning:
        view["warnings"] = [warning]
    return view


def remove_volume(
    ledger: Ledger, config: Config, actor: Actor, project: str, name: Any
) -> dict[str, Any]:
    """Delete an unmounted volume; its folder goes to quarantine, never to a newcomer."""
    name = check_volume_name(name)
    with ledger.transaction() as db:
        row, _ = authorize(db, actor, project, Action.EDIT_SETTINGS)
        volume = _volume(db, name)
        if volume is None or volume["project_id"] != row["id"]:
            raise NotFound(f"project {project} has no volume named {name!r}")
        mounted = _mounts_of_volume(db, volume["id"])
        if mounted:
            users = ", ".join(m["project"] for m in mounted)
            raise Conflict(
                f"volume {name} is mounted by {users}; unmount it first "
                f"(rxctl project set --project PROJECT --no-volume {name})"
            )
        db.table("volumes").delete(volume["id"])
        record_actor_event(db, actor, "volume.removed", "volume", name, {"project": project})
    answer: dict[str, Any] = {"removed": name}
    path = Path(volume["path"])
    try:
        moved = retire(path) if path.parent.is_dir() else None
        answer["quarantined"] = [str(moved)] if moved else []
    except (QuarantineError, OSError) as exc:
        log.error("cannot quarantine a volume", extra={"volume": name, "error": str(exc)})
        answer["warnings"] = [f"folder not moved to quarantine: {exc}"]
    return answer


def set_mount(
    ledger: Ledger, config: Config, actor: Actor, project: str, body: Any
) -> dict[str, Any]:
    """Mount a volume in the project (or change where or how): an owner of the project, under the
    rule. Takes effect at the container's next start and in new batch steps."""
    mount = check_mount(body)
    with ledger.transaction() as db:
        row, _ = authorize(db, actor, project, Action.EDIT_SETTINGS)
        volume = _volume(db, mount.volume)
        if volume is None:
            raise NotFound(f"no volume named {mount.volume!r}")
        if not may_mount(owners_of(db, volume["project_id"]), owners_of(db, row["id"])):
            raise Forbidden(
                f"project {project} may not mount volume {mount.volume}: no owner of the "
                "volume's project is an owner of this project"
            )
        taken = db.execute(
            "SELECT count(*) FROM volume_mounts WHERE project_id = ? AND target = ? "
            "AND volume_id != ?",
            [row["id"], mount.target, volume["id"]],
        ).fetchone()[0]
        if taken:
            raise Conflict(f"project {project} already mounts a volume at {mount.target}")
        db.execute(
            "INSERT INTO volume_mounts (project_id, volume_id, target, read_only) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (project_id, volume_id) "
            "DO UPDATE SET target = excluded.target, read_only = excluded.read_only",
            [row["id"], volume["id"], mount.target, int(mount.read_only)],
        )
        detail = {"project": project, "target": mount.target, "read_only": mount.read_only}
        record_actor_event(db, actor, "volume.mounted", "volume", mount.volume, detail)
    answer = list_volumes(ledger, actor, project)
    warning = sync_or_warn(ledger, config, mount.volume)
    if warning:
        answer["warnings"] = [warning]
    return answer


def remove_mount(
    ledger: Ledger, config: Config, actor: Actor, project: str, name: Any
) -> dict[str, Any]:
    name = check_volume_name(name)
    with ledger.transaction() as db:
        row, _ = authorize(db, actor, project, Action.EDIT_SETTINGS)
        volume = _volume(db, name)
        cursor = db.execute(
            "DELETE FROM volume_mounts WHERE project_id = ? AND volume_id = ?",
            [row["id"], volume["id"] if volume else -1],
        )
        if not cursor.rowcount:
            raise NotFound(f"project {project} does not mount a volume named {name!r}")
        record_actor_event(db, actor, "volume.unmounted", "volume", name, {"project": project})
    answer = list_volumes(ledger, actor, project)
    warning = sync_or_warn(ledger, config, name)
    if warning:
        answer["warnings"] = [warning]
    return answer


def _grants(
    db: LedgerDatabase, config: Config, volume: dict[str, Any], runtime: str
) -> list[Grant]:
    members = db.execute(
        "SELECT b.username, m.role FROM members m LEFT JOIN bindings b "
        "ON b.platform_user_id = m.platform_user_id WHERE m.project_id = ?",
        [volume["project_id"]],
    ).fetchall()
    write = {g.user: g.write for g in grants_for(members, runtime)}
    volume_owners = owners_of(db, volume["project_id"])
    for mount in _mounts_of_volume(db, volume["id"]):
        project = db.table("projects").get(mount["project_id"])
        user = runtime_identity(db, config, project)
        if user is None or not may_mount(volume_owners, owners_of(db, project["id"])):
            continue
        write[user] = write.get(user, False) or not mount["read_only"]
    return [Grant(user, w) for user, w in sorted(write.items())]


def sync_volume(
    ledger: Ledger, config: Config, name: str, *, fresh: bool = False, revoke: tuple[str, ...] = ()
) -> str | None:
    """Make or keep the volume's folder and its ACLs for who may use it now; a warning or None.
    Raises WorkspaceError when the folder cannot be prepared."""
    with ledger.read() as db:
        volume = _volume(db, name)
        if volume is None:
            return None
        project = db.table("projects").get(volume["project_id"])
        runtime = runtime_identity(db, config, project)
        grants = _grants(db, config, volume, runtime) if runtime else []
    path = Path(volume["path"])
    if runtime is None:
        if path.parent.is_dir() and park(path):
            _record_owner(ledger, volume["id"], 0)
        return f"volume {name}: its project's runtime identity is not bound; the folder is root's"
    prepared = prepare(
        path, runtime, grants, recorded_uid=volume["folder_uid"], fresh=fresh, revoke=revoke
    )
    if prepared.uid != volume["folder_uid"]:
        _record_owner(ledger, volume["id"], prepared.uid)
    log.info("volume prepared", extra={"volume": name, "runtime_user": runtime})
    return prepared.warning


def _record_owner(ledger: Ledger, volume_id: int, uid: int) -> None:
    with ledger.transaction() as db:
        if db.table("volumes").count_where("id = ?", [volume_id]):
            db.table("volumes").update(volume_id, {"folder_uid": uid})


def sync_or_warn(
    ledger: Ledger, config: Config, name: str, revoke: tuple[str, ...] = ()
) -> str | None:
    try:
        return sync_volume(ledger, config, name, revoke=revoke)
    except (WorkspaceError, OSError, ValueError) as exc:
        log.error("volume sync failed", extra={"volume": name, "error": str(exc)})
        return f"volume {name} not prepared: {exc}"


def sync_project_volumes(
    ledger: Ledger, config: Config, project: str, revoke: tuple[str, ...] = ()
) -> str | None:
    """After a change of members or runtime identity: the volumes the project owns or mounts."""
    with ledger.read() as db:
        names = [
            r[0]
            for r in db.execute(
                "SELECT v.name FROM volumes v JOIN projects p ON p.id = v.project_id "
                "WHERE p.name = ? UNION SELECT v.name FROM volume_mounts m "
                "JOIN volumes v ON v.id = m.volume_id JOIN projects p ON p.id = m.project_id "
                "WHERE p.name = ? ORDER BY 1",
                [project, project],
            ).fetchall()
        ]
    warnings = [sync_or_warn(ledger, config, name, revoke) for name in names]
    return "; ".join(w for w in warnings if w) or None
